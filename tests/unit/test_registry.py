"""Who may join, under which name and address (control/registry.py, decided in memory), and
the stores that keep it (SQLite, etcd and the in-memory twin alike, through the writes the
registry hands out: one contract, three implementations).

etcd is Debian's, started for this module in a network namespace of its own; the store's
calls run on a thread that entered that namespace."""

import asyncio
import ctypes
import ipaddress
import os
import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tunneld.control.registry import Refusal, Registry, allocate, valid_name
from tunneld.store.base import Conflict, NodeRecord, Register, StoreError
from tunneld.store.memory import MemoryStore
from tunneld.store.etcd import open_store
from tunneld.store.sqlite import SqliteStore
from tests.lab import Lab, wait_for
from tests.lab.relays import ETCD

NET = ipaddress.IPv4Network("100.64.0.0/10")
NOW = 1_700_000_000.0


def key(i):
    return bytes([i]) * 32


class Relay:
    """A registry and a store, kept in step the way the relay daemon keeps them."""

    def __init__(self, store, network=NET, run=asyncio.run):
        self.store = store
        self.run = run
        self.reg = Registry(network, run(store.load()))

    def write(self, write):
        if write is not None:
            self.run(write.apply(self.store))
            self.reg.written(write)

    def join(self, k, name, credential, now=NOW, mtu=None):
        decision, write = self.reg.join(k, name, credential, now, mtu)
        self.write(write)
        return decision

    def token(self, ttl, uses=0):
        token, write = self.reg.issue_token(key(0), ttl, NOW, os.urandom, uses)
        self.write(write)
        return token

    def reopened(self):
        return Registry(self.reg.network, self.run(self.store.load()))


@pytest.fixture(scope="module")
def etcd():
    """(url, run): an etcd in a namespace, and how to run a coroutine inside that namespace."""
    with Lab() as lab:
        ns = lab.add_namespace("etcd")
        lab.spawn(ns, ETCD, "--data-dir", os.path.join(lab.tmp, "etcd"), "--listen-client-urls",
                  "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
                  "--listen-peer-urls", "http://127.0.0.1:2380", log=os.path.join(lab.tmp, "etcd.log"))
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        libc = ctypes.CDLL(None, use_errno=True)
        pool = ThreadPoolExecutor(1, initializer=lambda: libc.setns(fd, 0x40000000))  # CLONE_NEWNET: this thread
        try:
            def run(coro):
                return pool.submit(asyncio.run, coro).result(30)
            url = "etcd://127.0.0.1:2379"
            probe = open_store(url, "/probe/")
            wait_for(lambda: _answers(run, probe), 30, interval=0.3, what="etcd to answer")
            yield url, run
        finally:
            pool.shutdown()
            os.close(fd)


def _answers(run, store) -> bool:
    try:
        run(store.load())
        return True
    except StoreError:
        return False


@pytest.fixture(params=["memory", "sqlite", "etcd"])
def relay(request, tmp_path):
    run = asyncio.run
    if request.param == "memory":
        store = MemoryStore()
    elif request.param == "sqlite":
        store = SqliteStore(str(tmp_path / "relay.db"))
    else:
        url, run = request.getfixturevalue("etcd")
        store = open_store(url, f"/test/{uuid.uuid4().hex}/")  # a network of its own
    yield Relay(store, run=run)
    run(store.close())


def test_first_join_needs_a_valid_token(relay):
    token = relay.token(3600)
    assert relay.join(key(1), "alpha", None).code == "unknown_key"
    assert relay.join(key(1), "alpha", token.token_id + bytes(16)).code == "bad_token"
    assert relay.join(key(1), "alpha", bytes(8) + token.secret).code == "bad_token"
    rec = relay.join(key(1), "alpha", token.credential)
    assert (rec.name, rec.address, rec.public_key) == ("alpha", "100.64.0.1", key(1))
    assert relay.reopened().tokens[token.token_id].uses == 1  # counted in the store, with the registration


def test_same_key_same_address_forever(relay):
    token = relay.token(60)
    a = relay.join(key(1), "alpha", token.credential)
    b = relay.join(key(2), "bravo", token.credential)
    assert (a.address, b.address) == ("100.64.0.1", "100.64.0.2")
    later = NOW + 86400  # the token expired long ago: the key is what counts now
    assert relay.join(key(1), "alpha", token.credential, later).address == a.address
    assert relay.join(key(1), "alpha", None, later).address == a.address
    assert relay.join(key(2), "renamed", None, later).name == "bravo"
    again = relay.reopened()  # and so it is after a restart
    assert again.join(key(1), "alpha", None, later)[0].address == a.address


def test_expired_and_revoked_tokens(relay):
    short = relay.token(10)
    assert relay.join(key(1), "alpha", short.credential, NOW + 11).code == "token_expired"
    forever = relay.token(None)
    write = relay.reg.revoke_token(forever.token_id)
    relay.write(write)
    assert relay.reg.revoke_token(forever.token_id) is None
    assert relay.join(key(1), "alpha", forever.credential).code == "token_revoked"
    assert relay.reopened().join(key(1), "alpha", forever.credential, NOW)[0].code == "token_revoked"


def test_name_taken_until_revoked_then_address_passes_on(relay):
    token = relay.token(None)
    old = relay.join(key(1), "alpha", token.credential)
    refusal = relay.join(key(2), "alpha", token.credential)
    assert refusal.code == "name_taken" and "tunneld revoke alpha" in refusal.message
    revoked, write = relay.reg.revoke("alpha", NOW)
    relay.write(write)
    assert revoked.public_key == key(1)
    assert relay.join(key(1), "alpha", token.credential).code == "key_revoked"
    new = relay.join(key(2), "alpha", token.credential)
    assert new.address == old.address and new.public_key == key(2)
    again = relay.reopened()
    assert again.join(key(1), "alpha", token.credential, NOW)[0].code == "key_revoked"
    assert again.join(key(2), "alpha", None, NOW)[0].address == old.address


def test_bad_names(relay):
    token = relay.token(None)
    for name in ("", "UPPER", "-lead", "trail-", "a..b", "x" * 254, "sp ace"):
        assert relay.join(key(1), name, token.credential).code == "bad_name", name
    assert valid_name("node-1.example.com")


def test_network_full(tmp_path):
    relay = Relay(MemoryStore(), ipaddress.IPv4Network("100.64.0.0/30"))
    token = relay.token(None)
    assert relay.join(key(1), "a", token.credential).address == "100.64.0.1"
    assert relay.join(key(2), "b", token.credential).address == "100.64.0.2"
    full = relay.join(key(3), "c", token.credential)
    assert isinstance(full, Refusal) and full.code == "network_full" and full.retry


def test_a_registration_is_unwritten_until_the_store_has_it_and_taken_back_if_it_fails(relay):
    token = relay.token(None)
    reg = relay.reg
    rec, write = reg.join(key(1), "alpha", token.credential, NOW)
    assert isinstance(write, Register) and reg.registering(key(1))
    reg.failed(write)  # the store said no: as if it had never happened
    assert not reg.registering(key(1)) and key(1) not in reg.by_key and "alpha" not in reg.by_name
    assert reg.tokens[token.token_id].uses == 0
    again, write = reg.join(key(1), "alpha", token.credential, NOW)
    assert again.address == rec.address  # the address was given back too
    relay.write(write)
    assert not reg.registering(key(1))


def test_a_failed_registration_of_a_revoked_name_leaves_the_name_waiting(relay):
    token = relay.token(None)
    relay.join(key(1), "alpha", token.credential)
    relay.write(relay.reg.revoke("alpha", NOW)[1])
    _, write = relay.reg.join(key(2), "alpha", token.credential, NOW)
    relay.reg.failed(write)
    assert relay.reg.by_name["alpha"].public_key is None and key(2) not in relay.reg.by_key
    assert relay.join(key(3), "alpha", token.credential).address == "100.64.0.1"


def test_the_stores_refuse_a_second_binding(relay):
    relay.run(relay.store.register(NodeRecord("alpha", "100.64.0.1", key(1), NOW), None))
    for record in (NodeRecord("alpha", "100.64.0.1", key(2), NOW), NodeRecord("bravo", "100.64.0.1", key(3), NOW),
                   NodeRecord("charlie", "100.64.0.9", key(1), NOW)):
        with pytest.raises(Conflict):
            relay.run(relay.store.register(record, None))
    assert [r.name for r in relay.run(relay.store.load()).nodes] == ["alpha"]


def test_allocate_fills_gaps():
    net = ipaddress.IPv4Network("100.64.0.0/29")
    assert allocate(net, set()) == "100.64.0.1"
    assert allocate(net, {"100.64.0.1", "100.64.0.3"}) == "100.64.0.2"
    assert allocate(net, {f"100.64.0.{i}" for i in range(1, 7)}) is None
    # a relay of several starts its search elsewhere, and wraps around to what is left
    assert allocate(net, set(), start=4) == "100.64.0.5"
    assert allocate(net, {"100.64.0.5", "100.64.0.6"}, start=4) == "100.64.0.1"
    assert allocate(net, {f"100.64.0.{i}" for i in range(1, 7)}, start=3) is None


def test_sqlite_survives_reopen(tmp_path):
    path = str(tmp_path / "relay.db")
    relay = Relay(SqliteStore(path))
    token = relay.token(None)
    rec = relay.join(key(1), "alpha", token.credential, mtu=1450)
    asyncio.run(relay.store.close())
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    store = SqliteStore(path)
    snapshot = asyncio.run(store.load())
    assert snapshot.nodes == [rec] and snapshot.nodes[0].mtu == 1450
    assert snapshot.tokens[0].uses == 1
    asyncio.run(store.close())


def test_sqlite_refuses_a_corrupt_file_and_leaves_it_alone(tmp_path):
    path = tmp_path / "relay.db"
    garbage = b"this is not a database" * 100
    path.write_bytes(garbage)
    with pytest.raises(StoreError, match="unreadable"):
        SqliteStore(str(path))
    assert path.read_bytes() == garbage


def test_sqlite_refuses_a_newer_schema(tmp_path):
    path = tmp_path / "relay.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="newer tunneld"):
        SqliteStore(str(path))


def test_last_seen_is_written_in_one_batch(relay):
    token = relay.token(None)
    relay.join(key(1), "alpha", token.credential)
    relay.join(key(2), "bravo", token.credential)
    relay.write(relay.reg.touch({"alpha": NOW + 5, "bravo": NOW + 6, "ghost": NOW}))
    seen = {r.name: r.last_seen for r in relay.run(relay.store.load()).nodes}
    assert seen == {"alpha": NOW + 5, "bravo": NOW + 6}


def test_a_version_1_database_is_migrated_in_place(tmp_path):
    path = tmp_path / "relay.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE nodes (name TEXT PRIMARY KEY, address TEXT NOT NULL UNIQUE, public_key BLOB UNIQUE,
                            created REAL NOT NULL, last_seen REAL);
        INSERT INTO nodes VALUES ('alpha', '100.64.0.1', x'0101010101010101010101010101010101010101010101010101010101010101', 1, NULL);
        PRAGMA user_version = 1;
    """)
    db.close()
    s = SqliteStore(str(path))
    (rec,) = asyncio.run(s.load()).nodes
    assert rec.address == "100.64.0.1" and rec.mtu is None
    asyncio.run(s.set_mtu("alpha", 1450))
    asyncio.run(s.close())
    s = SqliteStore(str(path))
    assert asyncio.run(s.load()).nodes[0].mtu == 1450
    asyncio.run(s.close())


def test_a_single_use_token_admits_one_node_and_survives_a_restart(relay):
    """Finding: tokens were reusable for 24 h by anyone who saw one."""
    token = relay.token(3600, uses=1)
    assert isinstance(relay.join(key(1), "alpha", token.credential), NodeRecord)
    refused = relay.join(key(2), "bravo", token.credential)
    assert refused.code == "token_used" and "--uses" in refused.message
    assert isinstance(relay.join(key(1), "alpha", token.credential), NodeRecord)  # its own node, again: fine
    reg = relay.reopened()
    assert reg.join(key(3), "charlie", token.credential, NOW)[0].code == "token_used"
    rows = {r["id"]: r for r in reg.token_rows()}
    assert rows[token.token_id.hex()]["uses"] == 1 and rows[token.token_id.hex()]["max_uses"] == 1


def test_a_failed_registration_gives_its_use_back(relay):
    token = relay.token(3600, uses=1)
    decision, write = relay.reg.join(key(1), "alpha", token.credential, NOW)
    relay.reg.failed(write)  # the store could not write it
    assert isinstance(relay.join(key(2), "bravo", token.credential), NodeRecord)


def test_approved_routes_are_stored_and_go_with_a_revoked_key(relay):
    token = relay.token(3600)
    relay.join(key(1), "gw", token.credential)
    relay.write(relay.reg.approvals.approve("gw", "198.18.0.0/16", NET, ["192.0.2.1"]))
    assert relay.reopened().approvals.effective("gw", ["198.18.1.0/24", "198.19.0.0/24"]) == ("198.18.1.0/24",)
    record, write = relay.reg.revoke("gw", NOW)
    relay.write(write)
    assert relay.reopened().approvals.effective("gw", ["198.18.1.0/24"]) == ()


def test_addresses_are_never_handed_out_in_the_clouds_service_ranges():
    """Alibaba Cloud's DNS, mirrors and metadata live in 100.100.0.0/16 (100.115.92.0/23 too)."""
    Net = ipaddress.IPv4Network
    assert allocate(Net("100.100.0.0/15"), set()) == "100.101.0.0"  # the first outside 100.100/16
    assert allocate(Net("100.115.92.0/22"), set()) == "100.115.94.0"
    assert allocate(Net("100.100.0.0/16"), set()) is None  # all of it reserved: full at once
    full = {f"100.99.255.{i}" for i in range(1, 255)}
    assert allocate(Net("100.99.255.0/24"), full) is None
    assert allocate(Net("100.64.0.0/10"), set()) == "100.64.0.1"
