"""The relay's durable state, behind a small async interface.

The relay reads everything once at start (load), decides from memory
(control/registry.py), and writes each change as one of the writes below, in order,
off the packet path (net/relayd.py). A registration is durable before the node hears
that it is in. SQLite (sqlite.py) by default; memory.py is the twin for tests; a
networked store implements the same methods and the engine does not change.

  load()                      everything: meta, nodes, revoked keys, tokens, approved routes
  register(record, token_id)  one transaction: bind record.public_key to record.name at
                              record.address (a new row, or the row of a revoked node
                              of that name), and count one use of the token. Conflict
                              if the name, key or address is bound elsewhere.
  register_many(items)        several registrations in one transaction (one fsync for a
                              crowd of nodes joining at once): all, or none and an error
  set_mtu, set_lock, set_routes, touch, revoke_node, add_token, revoke_token, set_meta
                              one write each
  save_presence(changes)      which nodes are homed on this relay: only a store shared by
                              several relays (etcd.py) keeps it; the others ignore it
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class StoreError(Exception):
    """The state cannot be read or written; nothing was changed."""


class Conflict(StoreError):
    """A name, key or address is already bound to another node."""


@dataclass
class NodeRecord:
    name: str
    address: str
    public_key: bytes | None  # None once revoked: name and address wait for a new key
    created: float
    last_seen: float | None = None
    mtu: int | None = None  # the node's underlay MTU towards the relay, as it last reported
    lock: bytes | None = None  # its network-lock chain (proto/lock.py), if it joined with one


@dataclass
class TokenRecord:
    token_id: bytes
    secret_hash: bytes
    created: float
    expires: float | None
    revoked: bool = False
    uses: int = 0
    max_uses: int = 0  # 0: any number until it expires


@dataclass
class Snapshot:
    meta: dict[str, str] = field(default_factory=dict)
    nodes: list[NodeRecord] = field(default_factory=list)
    revoked_keys: set[bytes] = field(default_factory=set)
    tokens: list[TokenRecord] = field(default_factory=list)
    routes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # approved, by node name


class Store(Protocol):
    async def load(self) -> Snapshot: ...
    async def register(self, record: NodeRecord, token_id: bytes | None) -> None: ...
    async def register_many(self, items: list[tuple[NodeRecord, bytes | None]]) -> None: ...
    async def set_mtu(self, name: str, mtu: int) -> None: ...
    async def set_lock(self, name: str, lock: bytes) -> None: ...
    async def set_routes(self, name: str, prefixes: tuple[str, ...]) -> None:
        """The prefixes approved for this node name (all of them: empty clears)."""
    async def touch(self, seen: dict[str, float]) -> None:
        """Record when these nodes were last connected (one write for many)."""
    async def revoke_node(self, name: str, key: bytes, now: float) -> None: ...
    async def add_token(self, token: TokenRecord) -> None: ...
    async def revoke_token(self, token_id: bytes) -> None: ...
    async def set_meta(self, key: str, value: str) -> None: ...
    async def save_presence(self, changes: dict[str, dict | None]) -> None: ...
    async def close(self) -> None: ...


# The writes the relay engine asks for, carried out in order by the daemon.

@dataclass(frozen=True)
class Register:
    record: NodeRecord
    token_id: bytes | None

    async def apply(self, store: Store) -> None:
        await store.register(self.record, self.token_id)


@dataclass(frozen=True)
class SaveMtu:
    name: str
    mtu: int

    async def apply(self, store: Store) -> None:
        await store.set_mtu(self.name, self.mtu)


@dataclass(frozen=True)
class SaveLock:
    name: str
    lock: bytes

    async def apply(self, store: Store) -> None:
        await store.set_lock(self.name, self.lock)


@dataclass(frozen=True)
class SaveRoutes:
    name: str
    prefixes: tuple

    async def apply(self, store: Store) -> None:
        await store.set_routes(self.name, self.prefixes)


@dataclass(frozen=True)
class Touch:
    seen: dict

    async def apply(self, store: Store) -> None:
        await store.touch(self.seen)


@dataclass(frozen=True)
class RevokeNode:
    name: str
    key: bytes
    when: float

    async def apply(self, store: Store) -> None:
        await store.revoke_node(self.name, self.key, self.when)


@dataclass(frozen=True)
class AddToken:
    token: TokenRecord

    async def apply(self, store: Store) -> None:
        await store.add_token(self.token)


@dataclass(frozen=True)
class RevokeToken:
    token_id: bytes

    async def apply(self, store: Store) -> None:
        await store.revoke_token(self.token_id)


@dataclass(frozen=True)
class SavePresence:
    changes: dict  # name -> what other relays need to reach it here, or None: no longer here

    async def apply(self, store: Store) -> None:
        await store.save_presence(self.changes)
