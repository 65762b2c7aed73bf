"""Who may join the overlay, under which name, at which address: the relay's decisions.

A node's key is its identity. The first join needs a valid token; the relay then
binds name and address to the key for good, so the same key gets the same address
after any restart, with or without a token. A name held by another key is refused
until an operator revokes that key; the name's next key then inherits its address.

Pure and in memory: built from the store's snapshot at start (store/base.py), it
answers every join without touching the store, and returns each change it makes as
a write for the daemon to carry out, in order. A new registration is `unwritten`
until the daemon reports it durable (written), and the relay answers the node only
then; if the write fails, failed() takes the registration back.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import Callable, Iterable

from ..proto.lock import CHAIN_LEN, ChainCache
from ..proto.messages import valid_name
from ..proto.token import ID_LEN, JoinToken, secret_hash, secret_matches
from ..store.base import AddToken, NodeRecord, Register, RevokeNode, RevokeToken, SaveLock, SaveMtu, Snapshot, \
    TokenRecord, Touch
from .approvals import ApprovalError, Approvals

MAX_ROUTES = 16
NOT_ENDORSED_MESSAGE = ("this network is locked: join with a token endorsed by the network lock "
                        "('tunneld lock endorse TOKEN --key FILE' where the lock key is kept)")
REVOKED_MESSAGE = ("this node's key was revoked on the relay; delete the key file in the node's state dir "
                   "and join again with a new token")


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str
    retry: bool = False  # True: not the node's fault, it should try again later


class RouteError(ValueError):
    """A prefix a node may not advertise; the message names the fix."""


NOT_ROUTABLE6 = tuple(ipaddress.IPv6Network(p) for p in ("::/8", "fe80::/10", "ff00::/8"))  # and ::ffff:0:0/96


def check_routes(texts: Iterable[str], overlay: ipaddress.IPv4Network | None = None,
                 overlay6: ipaddress.IPv6Network | None = None) -> tuple[str, ...]:
    """The prefixes a node may offer to route: real IPv4 or IPv6 prefixes, not the default
    route, not inside or around the overlay (either range), no link-local or multicast
    IPv6; normalised, sorted (IPv4 first), without duplicates; else RouteError. The command
    line checks them with this as the relay does."""
    out = set()
    for text in texts:
        try:
            prefix = ipaddress.ip_network(text, strict=True)
        except ValueError:
            raise RouteError(f"--advertise-routes {text[:40]!r} is not a prefix like 198.18.0.0/16 "
                             "or 2001:db8:70::/64") from None
        if prefix.prefixlen == 0:
            raise RouteError(f"--advertise-routes may not carry the default route {prefix}")
        if prefix.version == 6 and any(prefix.overlaps(n) for n in NOT_ROUTABLE6):
            raise RouteError(f"--advertise-routes {prefix} is link-local, multicast or reserved IPv6")
        for net in (overlay, overlay6):
            if net is not None and net.version == prefix.version and prefix.overlaps(net):
                raise RouteError(f"--advertise-routes {prefix} overlaps the overlay network {net}")
        out.add(prefix)
    if len(out) > MAX_ROUTES:
        raise RouteError(f"--advertise-routes takes at most {MAX_ROUTES} prefixes; summarise them")
    return tuple(str(p) for p in sorted(out, key=lambda p: (p.version, p)))


# Inside 100.64.0.0/10 but never handed out: clouds run their own services there (Alibaba
# Cloud's DNS, mirrors and metadata in 100.100.0.0/16; 100.115.92.0/23 is taken likewise).
RESERVED = tuple(ipaddress.IPv4Network(p) for p in ("100.100.0.0/16", "100.115.92.0/23"))


def allocate(network: ipaddress.IPv4Network, used: set[str], start: int = 0) -> str | None:
    """The lowest free host address of network, outside the RESERVED ranges; from `start`
    hosts in on, wrapping around (relays sharing a network start apart: their choices at the
    same moment rarely collide)."""
    return allocate_from(network, {int(ipaddress.IPv4Address(a)) for a in used}, start)


def allocate_from(network: ipaddress.IPv4Network, taken: set[int], start: int = 0) -> str | None:
    """allocate(), with the addresses in use as integers (the registry keeps them so)."""
    skip = [(int(r.network_address), int(r.broadcast_address)) for r in RESERVED if r.overlaps(network)]
    first, last = int(network.network_address), int(network.broadcast_address)
    if network.prefixlen < 31:
        first, last = first + 1, last - 1
    begin = first + start % max(1, last - first + 1)
    for lo, hi in ((begin, last), (first, begin - 1)):
        candidate = lo
        while candidate <= hi:
            jump = next((end for s, end in skip if s <= candidate <= end), None)
            if jump is not None:
                candidate = jump + 1
            elif candidate in taken:
                candidate += 1
            else:
                return str(ipaddress.IPv4Address(candidate))
    return None


class Registry:
    def __init__(self, network: ipaddress.IPv4Network, snapshot: Snapshot | None = None, *,
                 auto_approve: Iterable[str] = (), lock: bytes | None = None,
                 network6: ipaddress.IPv6Network | None = None):
        """lock: the network lock's public key (proto/lock.py): only endorsed keys join.
        network6: the IPv6 overlay prefix (control/overlay6.py), told to joining nodes."""
        snapshot = snapshot or Snapshot()
        self.network = network
        self.network6 = network6
        self.meta = dict(snapshot.meta)  # as the store held it at start
        self.approvals = Approvals(snapshot.routes, auto_approve)
        self.lock = ChainCache(lock) if lock else None
        self.by_name: dict[str, NodeRecord] = {r.name: r for r in snapshot.nodes}
        self.by_key: dict[bytes, NodeRecord] = {r.public_key: r for r in snapshot.nodes if r.public_key is not None}
        self.revoked: set[bytes] = set(snapshot.revoked_keys)
        self.tokens: dict[bytes, TokenRecord] = {t.token_id: t for t in snapshot.tokens}
        self.unwritten: set[bytes] = set()  # keys whose registration is not durable yet
        self.unavailable = ""  # why the store cannot be written now (etcd away): no new nodes
        self.alloc_start = 0  # where allocation starts, in hosts from the network's first
        self._used: set[int] | None = None  # the addresses of by_name, as integers, when known
        self._cursor: int | None = None  # where the last allocation ended
        self._slots: dict[bytes, set[str]] = {}  # the use slots of each token, as a shared store reports
        self._before: dict[bytes, NodeRecord | None] = {}  # what an unwritten registration replaced

    def nodes(self) -> list[NodeRecord]:
        return sorted(self.by_name.values(), key=lambda r: r.name)

    # -- joins ---------------------------------------------------------------------------

    def join(self, key: bytes, name: str, credential: bytes | None, now: float,
             mtu: int | None = None, chain: bytes | None = None) -> tuple[NodeRecord | Refusal, object | None]:
        """The decision on a join, and the write it needs (None: nothing changed). chain: the
        node's network-lock chain, if it has one (kept; required when the relay is locked)."""
        decision, write = self._join(key, name, credential, now, mtu, chain)
        if write is None and isinstance(decision, NodeRecord):
            if chain is not None and decision.lock != chain:  # a node re-endorsed with a new token
                decision.lock = chain
                write = SaveLock(decision.name, chain)
            elif mtu is not None and decision.mtu != mtu:
                decision.mtu = mtu
                write = SaveMtu(decision.name, mtu)
        return decision, write

    def _join(self, key, name, credential, now, mtu, chain):
        if key in self.revoked:
            return Refusal("key_revoked", REVOKED_MESSAGE), None
        known = self.by_key.get(key)
        if chain is not None and (len(chain) != CHAIN_LEN or (
                self.lock is not None and not self.lock.valid(chain, key, known.name if known else name))):
            chain = None
        if self.lock is not None and chain is None:
            return Refusal("not_endorsed", NOT_ENDORSED_MESSAGE), None
        if known is not None:
            return known, None
        if credential is None:
            return Refusal("unknown_key", "this node is not registered with the relay; "
                           "join with a token from 'tunneld token' on the relay"), None
        if self.unavailable:  # a registration must be durable, and shared with the other relays
            return Refusal("store_unavailable", f"the relay cannot reach its store ({self.unavailable}); "
                           "new nodes are admitted again once it is back", retry=True), None
        token = self.tokens.get(credential[:ID_LEN])
        if token is None or not secret_matches(credential[ID_LEN:], token.secret_hash):
            return Refusal("bad_token", "the join token is not valid on this relay; "
                           "print a new one on the relay with 'tunneld token'"), None
        if token.revoked:
            return Refusal("token_revoked", "the join token was revoked on the relay; "
                           "print a new one with 'tunneld token'"), None
        if token.expires is not None and now >= token.expires:
            return Refusal("token_expired", "the join token has expired; "
                           "print a new one on the relay with 'tunneld token'"), None
        if token.max_uses and token.uses >= token.max_uses:
            return Refusal("token_used", f"the join token was already used by {token.uses} node"
                           f"{'s' if token.uses > 1 else ''}, all it admits; print a new one on the relay "
                           "with 'tunneld token' ('--uses N' for a batch of nodes)"), None
        if not valid_name(name):
            return Refusal("bad_name", f"the node name {name[:64]!r} is not a lower-case DNS name; "
                           "set a valid one with --name"), None
        holder = self.by_name.get(name)
        if holder is not None:
            if holder.public_key is not None:
                return Refusal("name_taken", f"the name {name!r} belongs to another node's key; pick "
                               f"another --name, or run 'tunneld revoke {name}' on the relay first"), None
            record = dataclasses.replace(holder, public_key=key, mtu=mtu, lock=chain)  # a revoked name's next key
        else:
            address = allocate_from(self.network, self._taken(),
                                    self.alloc_start if self._cursor is None else self._cursor)
            if address is None:
                return Refusal("network_full", f"no free address left in {self.network}; "
                               "the relay operator must revoke nodes or widen --network", retry=True), None
            record = NodeRecord(name, address, key, now, mtu=mtu, lock=chain)
            self._taken().add(int(ipaddress.IPv4Address(address)))
            # The next search starts after it: a crowd of joins costs N, not N^2.
            self._cursor = int(ipaddress.IPv4Address(address)) - int(self.network.network_address)
        self._before[key] = holder
        self.by_name[name] = record
        self.by_key[key] = record
        self.unwritten.add(key)
        token.uses += 1
        return record, Register(dataclasses.replace(record), token.token_id)

    def _taken(self) -> set[int]:
        if self._used is None:  # once, and again after a registration was taken back
            self._used = {int(ipaddress.IPv4Address(r.address)) for r in self.by_name.values()}
        return self._used

    def registering(self, key: bytes) -> bool:
        """A registration of key is on its way to the store: no answer until it is there."""
        return key in self.unwritten

    def written(self, write) -> None:
        if isinstance(write, Register):
            self.unwritten.discard(write.record.public_key)
            self._before.pop(write.record.public_key, None)

    def failed(self, write) -> None:
        """A write did not reach the store. A registration or a new token is taken back: what
        the store does not hold must not admit anyone. A revocation stays in force in memory
        (the operator is told it is not stored)."""
        if isinstance(write, AddToken):
            self.tokens.pop(write.token.token_id, None)
            return
        if not isinstance(write, Register):
            return
        key, name = write.record.public_key, write.record.name
        self.unwritten.discard(key)
        before = self._before.pop(key, None)
        record = self.by_name.get(name)
        if record is None or record.public_key != key:
            return  # revoked meanwhile: that write follows this one
        self.by_key.pop(key, None)
        self._used = self._cursor = None  # its address is free again: the next search starts over
        if before is None:
            del self.by_name[name]
        else:
            self.by_name[name] = before
        token = self.tokens.get(write.token_id)
        if token is not None:
            token.uses -= 1

    # -- what operators do ---------------------------------------------------------------

    def revoke(self, name: str, now: float) -> tuple[NodeRecord | None, RevokeNode | None]:
        """Refuse this name's key from now on; its name and address wait for a new key."""
        record = self.by_name.get(name)
        if record is None or record.public_key is None:
            return None, None
        key = record.public_key
        self.revoked.add(key)
        self.by_key.pop(key, None)
        self.unwritten.discard(key)
        revoked = dataclasses.replace(record)
        record.public_key = record.lock = None
        self.approvals.forget(name)
        return revoked, RevokeNode(name, key, now)

    def approve_route(self, name: str, prefix: str, relay_addresses):
        """The write for an approval (control/approvals.py), or ApprovalError."""
        if name not in self.by_name:
            raise ApprovalError(f"no node named {name[:64]!r} on this relay; see 'tunneld routes list'")
        return self.approvals.approve(name, prefix, self.network, relay_addresses, self.network6)

    def issue_token(self, relay_public: bytes, ttl: float | None, now: float,
                    random: Callable[[int], bytes], uses: int = 1) -> tuple[JoinToken, AddToken]:
        """uses: how many nodes it admits (0: any number until it expires)."""
        token = JoinToken.new(relay_public, random)
        record = TokenRecord(token.token_id, secret_hash(token.secret), now, None if ttl is None else now + ttl,
                             max_uses=uses)
        self.tokens[token.token_id] = record
        return token, AddToken(dataclasses.replace(record))

    def token_rows(self) -> list[dict]:
        """The tokens, oldest first, as `tunneld token --list` shows them (and the control
        socket carries them)."""
        return [{"id": t.token_id.hex(), "created": t.created, "expires": t.expires, "uses": t.uses,
                 "max_uses": t.max_uses, "revoked": t.revoked} for t in sorted(self.tokens.values(), key=lambda t: t.created)]

    def revoke_token(self, token_id: bytes) -> RevokeToken | None:
        t = self.tokens.get(token_id)
        if t is None or t.revoked:
            return None
        t.revoked = True
        return RevokeToken(token_id)

    # -- what other relays did (a store shared by several relays, engine/cluster.py) -----

    def remote_node(self, record: NodeRecord) -> bool:
        """A registration another relay made (or our own, coming back); True if it is news."""
        held = self.by_name.get(record.name)
        if held is not None and held.public_key == record.public_key and held.address == record.address:
            held.lock = record.lock or held.lock
            return False
        if held is not None and held.public_key is not None and self.by_key.get(held.public_key) is held:
            del self.by_key[held.public_key]
        record.mtu = record.mtu or (held.mtu if held else None)
        self.by_name[record.name] = record
        if held is not None:
            self._used = None  # the address it replaced may be free now: counted again when needed
        elif self._used is not None:
            self._used.add(int(ipaddress.IPv4Address(record.address)))
        if record.public_key is not None and record.public_key not in self.revoked:
            self.by_key[record.public_key] = record
        return True

    def remote_revoked(self, key: bytes) -> NodeRecord | None:
        """A key another relay revoked: the record it was bound to, if this is news."""
        if key in self.revoked:
            return None
        self.revoked.add(key)
        self.unwritten.discard(key)
        record = self.by_key.pop(key, None)
        if record is None:
            return None
        revoked = dataclasses.replace(record)
        record.public_key = record.lock = None
        self.approvals.forget(record.name)
        return revoked

    def remote_token(self, token: TokenRecord) -> None:
        held = self.tokens.get(token.token_id)
        token.uses = max(token.uses, held.uses if held else 0, len(self._slots.get(token.token_id, ())))
        self.tokens[token.token_id] = token

    def remote_token_use(self, token_id: bytes, slot: str) -> None:
        """A node a token admitted, at any relay (ours come back too: counted once)."""
        slots = self._slots.setdefault(token_id, set())
        slots.add(slot)
        token = self.tokens.get(token_id)
        if token is not None:
            token.uses = max(token.uses, len(slots))

    def touch(self, seen: dict[str, float]) -> Touch:
        for name, when in seen.items():
            if name in self.by_name:
                self.by_name[name].last_seen = when
        return Touch(dict(seen))
