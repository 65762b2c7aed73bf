"""The relay's durable state, behind a small interface.

SQLite (sqlite.py) by default; memory.py is the in-memory twin for unit tests; a
deployment with several relays can implement the same methods over etcd.
The decisions (who may join, which address) live in control/registry.py, not here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol


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


@dataclass
class TokenRecord:
    token_id: bytes
    secret_hash: bytes
    created: float
    expires: float | None
    revoked: bool = False
    uses: int = 0


class Store(Protocol):
    def get_meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...

    def node_by_key(self, key: bytes) -> NodeRecord | None: ...
    def node_by_name(self, name: str) -> NodeRecord | None: ...
    def nodes(self) -> list[NodeRecord]: ...
    def register(self, name: str, key: bytes, allocate: Callable[[set[str]], str | None],
                 now: float) -> NodeRecord | None:
        """Bind key to name: reuse the row of a revoked node of that name (and its
        address), or insert one with allocate(addresses in use). None: no address left."""
    def set_mtu(self, name: str, mtu: int) -> None: ...
    def touch(self, seen: dict[str, float]) -> None:
        """Record when these nodes were last connected (one write for many)."""
    def revoke_node(self, name: str, now: float) -> bool: ...
    def key_revoked(self, key: bytes) -> bool: ...

    def add_token(self, token: TokenRecord) -> None: ...
    def token(self, token_id: bytes) -> TokenRecord | None: ...
    def tokens(self) -> list[TokenRecord]: ...
    def revoke_token(self, token_id: bytes) -> bool: ...
    def use_token(self, token_id: bytes) -> None: ...

    def close(self) -> None: ...
