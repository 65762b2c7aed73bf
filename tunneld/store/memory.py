"""In-memory Store: the twin of sqlite.py for unit and simulation tests.

Its methods never wait, so a simulation without an event loop can carry out a write
at once with run_now(write.apply(store)). Setting `fail` makes the next write raise
it, so that tests can show what the relay does after a write failed.
"""

from __future__ import annotations

import dataclasses

from .base import Conflict, NodeRecord, Snapshot, TokenRecord


class MemoryStore:
    shared = False  # one relay's own
    batch_limit = 64  # registrations in one transaction at most
    def __init__(self):
        self.meta: dict[str, str] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.revoked: set[bytes] = set()
        self.tokens: dict[bytes, TokenRecord] = {}
        self.routes: dict[str, tuple[str, ...]] = {}
        self.fail: Exception | None = None  # raised by the next write, once
        self.writes = 0

    async def load(self) -> Snapshot:
        return Snapshot(dict(self.meta), [dataclasses.replace(r) for r in sorted(self.nodes.values(),
                                                                                key=lambda r: r.name)],
                        set(self.revoked),
                        [dataclasses.replace(t) for t in sorted(self.tokens.values(), key=lambda t: t.created)],
                        dict(self.routes))

    def _write(self) -> None:
        if self.fail is not None:
            exc, self.fail = self.fail, None
            raise exc
        self.writes += 1

    async def register(self, record: NodeRecord, token_id: bytes | None) -> None:
        self._write()
        held = self.nodes.get(record.name)
        if held is not None and (held.public_key is not None or held.address != record.address):
            raise Conflict(f"name {record.name!r} is taken")
        if any(r.name != record.name and (r.public_key == record.public_key or r.address == record.address)
               for r in self.nodes.values()):
            raise Conflict("key or address already registered")
        self.nodes[record.name] = dataclasses.replace(record)
        if token_id is not None and token_id in self.tokens:
            self.tokens[token_id].uses += 1

    async def register_many(self, items: list[tuple[NodeRecord, bytes | None]]) -> None:
        before = (dict(self.nodes), {k: t.uses for k, t in self.tokens.items()}, self.writes)
        try:
            for record, token_id in items:
                await self.register(record, token_id)
        except Exception:  # all or none, as in one transaction
            self.nodes, self.writes = before[0], before[2]
            for k, uses in before[1].items():
                self.tokens[k].uses = uses
            raise
        self.writes = before[2] + 1

    async def set_mtu(self, name: str, mtu: int) -> None:
        self._write()
        if name in self.nodes:
            self.nodes[name].mtu = mtu

    async def set_lock(self, name: str, lock: bytes) -> None:
        self._write()
        if name in self.nodes:
            self.nodes[name].lock = lock

    async def set_routes(self, name: str, prefixes: tuple[str, ...]) -> None:
        self._write()
        if prefixes:
            self.routes[name] = tuple(prefixes)
        else:
            self.routes.pop(name, None)

    async def touch(self, seen: dict[str, float]) -> None:
        self._write()
        for name, when in seen.items():
            if name in self.nodes:
                self.nodes[name].last_seen = when

    async def revoke_node(self, name: str, key: bytes, now: float) -> None:
        self._write()
        self.revoked.add(key)
        rec = self.nodes.get(name)
        if rec is not None and rec.public_key == key:
            rec.public_key = rec.lock = None
        self.routes.pop(name, None)

    async def add_token(self, token: TokenRecord) -> None:
        self._write()
        self.tokens[token.token_id] = dataclasses.replace(token)

    async def revoke_token(self, token_id: bytes) -> None:
        self._write()
        if token_id in self.tokens:
            self.tokens[token_id].revoked = True

    async def set_meta(self, key: str, value: str) -> None:
        self._write()
        self.meta[key] = value

    async def save_presence(self, changes: dict) -> None:
        pass  # one relay: where nodes are homed is no one else's business

    async def close(self) -> None:
        pass


def run_now(coro):
    """Run a coroutine that never waits (a MemoryStore's) to its end, without a loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("run_now: the coroutine waited for something")
