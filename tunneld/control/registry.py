"""Who may join the overlay, under which name, at which address: the relay's decisions.

A node's key is its identity. The first join needs a valid token; the relay then
binds name and address to the key for good, so the same key gets the same address
after any restart, with or without a token. A name held by another key is refused
until an operator revokes that key; the name's next key then inherits its address.
Pure: state goes through a Store, time comes in as an argument.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ..proto.token import ID_LEN, JoinToken, secret_hash, secret_matches
from ..store.base import Conflict, NodeRecord, Store, TokenRecord

_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str
    retry: bool = False  # True: not the node's fault, it should try again later


def valid_name(name: str) -> bool:
    """A Kubernetes node name: a lower-case DNS subdomain."""
    return bool(_NAME.match(name)) and ".." not in name


def check_routes(routes: list[str], network: ipaddress.IPv4Network) -> tuple[str, ...] | Refusal:
    """The prefixes a node may offer to route: real IPv4 prefixes, not the default route,
    not inside or around the overlay itself. Normalised, sorted, without duplicates."""
    out = set()
    for text in routes:
        try:
            prefix = ipaddress.IPv4Network(text, strict=True)
        except ValueError:
            return Refusal("bad_route", f"--advertise-routes {text[:20]!r} is not an IPv4 prefix like 198.18.0.0/16")
        if prefix.prefixlen == 0:
            return Refusal("bad_route", "--advertise-routes may not carry the default route")
        if prefix.overlaps(network):
            return Refusal("bad_route", f"--advertise-routes {prefix} overlaps the overlay network {network}")
        out.add(prefix)
    return tuple(str(p) for p in sorted(out))


def allocate(network: ipaddress.IPv4Network, used: set[str]) -> str | None:
    """The lowest free host address of network."""
    taken = {int(ipaddress.IPv4Address(a)) for a in used}
    first, last = int(network.network_address), int(network.broadcast_address)
    if network.prefixlen < 31:
        first, last = first + 1, last - 1
    for candidate in range(first, last + 1):
        if candidate not in taken:
            return str(ipaddress.IPv4Address(candidate))
    return None


class Registry:
    def __init__(self, store: Store, network: ipaddress.IPv4Network):
        self.store = store
        self.network = network

    def join(self, key: bytes, name: str, credential: bytes | None, now: float,
             mtu: int | None = None) -> NodeRecord | Refusal:
        decision = self._join(key, name, credential, now)
        if isinstance(decision, NodeRecord) and mtu is not None and decision.mtu != mtu:
            self.store.set_mtu(decision.name, mtu)
            decision.mtu = mtu
        return decision

    def _join(self, key: bytes, name: str, credential: bytes | None, now: float) -> NodeRecord | Refusal:
        store = self.store
        if store.key_revoked(key):
            return Refusal("key_revoked", "this node's key was revoked on the relay; delete the key "
                           "file in the node's state dir and join again with a new token")
        known = store.node_by_key(key)
        if known is not None:
            return known
        if credential is None:
            return Refusal("unknown_key", "this node is not registered with the relay; "
                           "join with a token from 'tunneld token' on the relay")
        token = store.token(credential[:ID_LEN])
        if token is None or not secret_matches(credential[ID_LEN:], token.secret_hash):
            return Refusal("bad_token", "the join token is not valid on this relay; "
                           "print a new one on the relay with 'tunneld token'")
        if token.revoked:
            return Refusal("token_revoked", "the join token was revoked on the relay; "
                           "print a new one with 'tunneld token'")
        if token.expires is not None and now >= token.expires:
            return Refusal("token_expired", "the join token has expired; "
                           "print a new one on the relay with 'tunneld token'")
        if not valid_name(name):
            return Refusal("bad_name", f"the node name {name[:64]!r} is not a lower-case DNS name; "
                           "set a valid one with --name")
        holder = store.node_by_name(name)
        if holder is not None and holder.public_key is not None:
            return Refusal("name_taken", f"the name {name!r} belongs to another node's key; pick "
                           f"another --name, or run 'tunneld revoke {name}' on the relay first")
        try:
            record = store.register(name, key, lambda used: allocate(self.network, used), now)
        except Conflict:
            return Refusal("name_taken", f"the name {name!r} was just taken by another node; "
                           "pick another --name")
        if record is None:
            return Refusal("network_full", f"no free address left in {self.network}; "
                           "the relay operator must revoke nodes or widen --network", retry=True)
        store.use_token(token.token_id)
        return record

    def issue_token(self, relay_public: bytes, ttl: float | None, now: float) -> JoinToken:
        token = JoinToken.new(relay_public)
        self.store.add_token(TokenRecord(token.token_id, secret_hash(token.secret), now,
                                         None if ttl is None else now + ttl))
        return token
