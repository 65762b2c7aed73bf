"""The relay daemon's StoreWriter (net/relayd.py) against the in-memory store: writes in
order, registrations that wait together in one transaction, a bad one alone, and
drained() that says what failed."""

import asyncio
from collections import deque

from tunneld.net.relayd import StoreWriter
from tunneld.store.base import NodeRecord, Register, SaveMtu
from tunneld.store.memory import MemoryStore


class Engine:
    def __init__(self):
        self.writes = deque()
        self.told = []

    def written(self, w):
        self.told.append(("written", w))

    def failed(self, w, why):
        self.told.append(("failed", w))


def register(i, name=None):
    return Register(NodeRecord(name or f"n{i}", f"100.64.0.{i}", bytes([i]) * 32, 0.0), None)


def run(engine, store, *batches):
    async def main():
        writer = StoreWriter(engine, store)
        task = asyncio.create_task(writer.run())
        answers = []
        for batch in batches:
            engine.writes.extend(batch)
            answers.append(await writer.drained(5.0))
        task.cancel()
        return answers
    return asyncio.run(main())


def test_registrations_that_wait_together_share_one_transaction():
    engine, store = Engine(), MemoryStore()
    crowd = [register(i) for i in range(1, 11)]
    assert run(engine, store, crowd + [SaveMtu("n1", 1400)]) == [None]
    assert sorted(store.nodes) == sorted(f"n{i}" for i in range(1, 11)) and store.nodes["n1"].mtu == 1400
    assert store.writes == 2  # ten registrations, one write; then the MTU
    assert engine.told == [("written", w) for w in crowd] + [("written", engine.told[-1][1])]


def test_one_bad_registration_fails_alone_and_the_rest_get_in():
    engine, store = Engine(), MemoryStore()
    good, clash, after = register(1), register(2, name="n1"), register(3)  # n1 twice: a conflict
    why, = run(engine, store, [good, clash, after])
    assert why is not None and "taken" in why
    assert engine.told == [("written", good), ("failed", clash), ("written", after)]
    assert sorted(store.nodes) == ["n1", "n3"]


def test_drained_speaks_only_of_its_own_writes():
    engine, store = Engine(), MemoryStore()
    first, again = run(engine, store, [register(1), register(2, name="n1")], [register(3)])
    assert first is not None and again is None
