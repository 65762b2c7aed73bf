"""The etcd client's endpoint rotation (the lab's tests run a real etcd cluster; this one
sets the answers of a leader election exactly): members without a leader are tried again
for a few seconds, dead members are not waited for."""

import asyncio

import httpx
import pytest

from tunneld.store import etcdgw
from tunneld.store.etcdgw import EtcdClient, EtcdUnavailable

OK = {"header": {"revision": "7"}, "kvs": []}


def client_answering(answers: list, monkeypatch) -> tuple[EtcdClient, list]:
    """A client of three members whose calls are answered, in turn, from answers: a status
    and a body, or an exception to raise."""
    monkeypatch.setattr(etcdgw, "ELECTION_RETRY", 0.01)
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.host)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer[0], json=answer[1])

    c = EtcdClient(["192.0.2.21:2379", "192.0.2.22:2379", "192.0.2.23:2379"])
    c._clients[asyncio.get_event_loop()] = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return c, seen


def run(coro):
    return asyncio.get_event_loop().run_until_complete(coro)


@pytest.fixture(autouse=True)
def loop():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


def test_an_election_is_waited_out(monkeypatch):
    no_leader = (503, {"error": "etcdserver: no leader", "code": 14})
    dead = httpx.ConnectError("refused")
    timed_out = httpx.ReadTimeout("timed out")
    c, seen = client_answering([no_leader, timed_out, dead, no_leader, no_leader, dead, (200, OK)], monkeypatch)
    kvs, revision, more = run(c.range(b"k"))
    assert (kvs, revision, more) == ([], 7, False) and len(seen) == 7
    assert c._good == 0  # the member that answered is asked first next time


def test_dead_members_are_not_waited_for(monkeypatch):
    dead = httpx.ConnectError("refused")
    c, seen = client_answering([dead, dead, dead], monkeypatch)
    with pytest.raises(EtcdUnavailable) as e:
        run(c.range(b"k"))
    assert len(seen) == 3 and "192.0.2.23" in str(e.value)


def test_an_election_that_outlasts_the_wait_gives_up(monkeypatch):
    monkeypatch.setattr(etcdgw, "ELECTION_WAIT", 0.05)
    no_leader = (503, {"error": "etcdserver: no leader"})
    c, seen = client_answering([no_leader] * 300, monkeypatch)
    with pytest.raises(EtcdUnavailable):
        run(c.range(b"k"))
    assert 6 <= len(seen) < 300
