"""The relay's members, and how a node becomes one: its join handshake, without I/O.

A Member is a registered node that has connected since the relay started: its keys
(a KeyRing), the endpoint an authenticated message last came from, what it told us
in its last join (MTU, routes, LAN endpoints, hello), and what it has sent through us.

A join, per INIT (Joins.on_init):
  1. cheap checks first: the INIT's shape and mac1 (for our key, or a hint goes back);
  2. under a flood, a cookie before any public-key work, and a share per source
     address (control/ratelimit.py);
  3. Noise IK: who it is; the join request: what it asks (proto/messages.py);
  4. the decision: its protocol range meets ours, its routes and MTU are sane, and
     the registry (control/registry.py, in memory) admits its key under that name;
  5. the answer: a RESP carrying its address and the overlay MTU, or the refusal and
     what to do about it. A new registration's answer waits until the store holds it
     (written), and if the node asks again meanwhile, the answer to its newest
     handshake waits instead; if the store fails, the registration is taken back
     (failed), and the node, which heard nothing, asks again after its backoff.
"""

from __future__ import annotations

import ipaddress
import logging

from ..logs import event
from ..control.directory import Entry
from ..control.registry import Refusal, RouteError, check_routes
from ..drops import Drop
from ..proto import endpoint, messages, wire
from ..proto.errors import ProtocolError
from ..proto.handshake import read_initiation
from ..proto.noise import KeyPair
from ..proto.version import LEGACY, OURS
from ..store.base import Register
from .sessions import IndexTable, KeyRing

log = logging.getLogger("tunneld.relay")


class Member:
    __slots__ = ("name", "addr", "address", "key", "keys", "endpoint", "online", "last_rx", "last_ts",
                 "dir_version", "relayed_prefix", "rx_bytes", "tx_bytes", "rx_packets", "mtu", "routes", "lan",
                 "hello", "resp_ep", "proof", "proof_ep", "proof_at", "snapshot_at", "lock", "approved")

    def __init__(self, name: str, address: str, key: bytes, table: IndexTable, mtu: int | None = None):
        self.name = name
        self.address = address
        self.addr = ipaddress.IPv4Address(address).packed
        self.key = key
        self.keys = KeyRing(table, self)
        self.endpoint = None
        self.online = False
        self.last_rx = 0.0
        self.last_ts = b""
        self.dir_version: int | None = None
        self.relayed_prefix = wire.relayed_header(self.addr)
        self.rx_bytes = self.tx_bytes = self.rx_packets = 0
        self.mtu = mtu or 0
        self.routes: tuple[str, ...] = ()  # what it offers to route; only while it is connected
        self.lan: tuple[str, ...] = ()  # its LAN endpoints, likewise
        self.hello = LEGACY
        self.lock = b""  # its network-lock chain, as the registry holds it
        self.approved: tuple[str, ...] = ()  # those of its routes the operator approved
        self.resp_ep = None  # where the answer to its last handshake went
        self.proof: bytes | None = None  # the endpoint proof in flight (relay.py), to proof_ep
        self.proof_ep = None
        self.proof_at = self.snapshot_at = float("-inf")

    def entry(self) -> Entry:
        return Entry(self.name, self.addr, self.key, self.online,
                     endpoint.format(self.endpoint) if self.endpoint is not None else "", self.mtu,
                     self.approved if self.online else (), self.lan if self.online else (), self.hello,
                     self.lock)


class Joins:
    """The join handshakes of one relay (engine/relay.py), on its state."""

    def __init__(self, relay):
        self.relay = relay
        self._held: dict[bytes, tuple[object, bytes]] = {}  # key -> (endpoint, RESP) awaiting its write

    def on_init(self, data: bytes, ep, now: float) -> None:
        r = self.relay
        try:
            wire.parse_init(data)
        except ProtocolError:
            r.drops[Drop.HANDSHAKE_MALFORMED] += 1
            return
        if not wire.mac1_valid(data, r.identity.mac1_key):
            r.drops[Drop.HANDSHAKE_WRONG_KEY] += 1
            r.hint(ep, wire.HINT_NOT_MY_KEY, bytes(4))
            return
        # Under load: no Diffie-Hellman for a sender that has not shown it receives at its
        # address, and no more than its share for one that has.
        host, source = endpoint.source(ep)
        refused = r.guard.check(data, host, source, now)
        if refused:
            r.drops[refused] += 1
            if refused is Drop.HANDSHAKE_NEEDS_COOKIE:
                r.counts["cookie_replies"] += 1
                r.send(ep, r.guard.cookie_reply(data, source, now))
            return
        r.counts["initiations_processed"] += 1  # the public-key work the cookies bound
        try:
            incoming = read_initiation(r.identity, data)
        except ProtocolError:
            r.drops[Drop.HANDSHAKE_INVALID] += 1
            return
        try:
            request = messages.decode_join_request(incoming.payload)
        except ProtocolError:
            r.drops[Drop.JOIN_MALFORMED] += 1
            return
        key = incoming.remote_public
        m = r.members.get(key)
        if m is not None and request["ts"] <= m.last_ts:
            r.drops[Drop.HANDSHAKE_REPLAY] += 1
            return
        waiting = r.registry.registering(key)  # it asked again before its registration was stored
        decision, write = self._decide(key, request)
        ephemeral = KeyPair.from_private_bytes(r.env.random(32))
        index = r.table.allocate()
        if isinstance(decision, Refusal):
            r.counts["join_refused"] += 1
            log.warning("refused %r from %s: %s (%s)", request["name"][:64], endpoint.format(ep), decision.code,
                        decision.message, extra=event("join_refused", name=request["name"][:64],
                                                      endpoint=endpoint.format(ep), code=decision.code))
            reply = {"ok": False, "code": decision.code, "error": decision.message, "retry": decision.retry,
                     **OURS.wire()}
            resp, _ = incoming.accept(index, messages.encode(reply), now, ephemeral)
            r.send(ep, resp)
            return
        if m is None or m.address != decision.address or m.name != decision.name:
            if m is not None:
                r.forget(m)
            m = Member(decision.name, decision.address, key, r.table)
            r.members[key] = m
        m.last_ts = request["ts"]
        m.mtu = request["mtu"]
        m.routes = request["routes"]
        m.approved = r.registry.approvals.effective(m.name, m.routes)
        m.lock = decision.lock or b""
        m.lan = tuple(ep for ep in request["lan"] if (p := endpoint.parse(ep)) is not None and endpoint.reachable(p))
        m.hello = request["hello"]
        r.set_mtu(m.name, m.mtu)
        if m.online:
            r.directory.set(m.entry())
        reply = {"ok": True, "name": m.name, "address": m.address, "network": str(r.registry.network),
                 "endpoint": endpoint.format(ep), "mtu": r.directory.mtu, "relay_mtu": r.relay_mtu, **OURS.wire()}
        if r.registry.network6 is not None:  # 0.6 on; older nodes take no notice of it
            reply["network6"] = str(r.registry.network6)
        resp, s = incoming.accept(index, messages.encode(reply), now, ephemeral)
        m.keys.offer(s)
        m.resp_ep = ep
        r.counts["handshakes"] += 1
        if write is not None:
            r.writes.append(write)
        if isinstance(write, Register) or waiting:
            # Durable first, then the node may know it is in; if it asks again meanwhile, the
            # answer to its newest handshake is the one that goes out.
            self._held[key] = (ep, resp)
            r.counts["joins_held"] += 1
        else:
            r.send(ep, resp)

    def _decide(self, key: bytes, request: dict):
        """The registry's decision, after what the relay checks itself: protocol, routes, MTU."""
        r = self.relay
        problem = request["hello"].problem(us="the relay", them="this node")
        if problem is not None:  # retry: the fix is an upgrade, after which it should just work
            return Refusal("protocol_version", problem, retry=True), None
        try:
            request["routes"] = check_routes(request["routes"], r.registry.network, r.registry.network6)
        except RouteError as exc:
            return Refusal("bad_route", str(exc)), None
        if request["mtu"] < wire.MIN_UNDERLAY_MTU:  # it would shrink every node's MTU with its own
            return Refusal("bad_mtu", f"the node reports a path MTU of {request['mtu']}, below the "
                           f"{wire.MIN_UNDERLAY_MTU} a tunnel needs; fix the node's link MTU"), None
        return r.registry.join(key, request["name"], request["token"], r.env.wall(), request["mtu"],
                               request["chain"])

    def written(self, write) -> None:
        """The store holds write: a held answer may go out."""
        if isinstance(write, Register):
            held = self._held.pop(write.record.public_key, None)
            if held is not None:
                self.relay.send(*held)

    def failed(self, write) -> None:
        """The store refused or lost a registration: the member it made goes too."""
        if isinstance(write, Register):
            r = self.relay
            key = write.record.public_key
            self._held.pop(key, None)
            m = r.members.get(key)
            if m is not None and r.registry.by_key.get(key) is None:
                del r.members[key]
                r.forget(m)
                r.set_mtu(m.name, None)
                # Its address may be another node's now (another relay won it): show that one.
                holder = next((rec for rec in r.registry.by_name.values()
                               if rec.address == m.address and rec.public_key is not None), None)
                if holder is None:
                    r.directory.remove(m.addr)
                elif r.cluster is not None:
                    r.cluster.show(holder.name)

    def drop(self, key: bytes) -> None:
        """An answer held for key will not go out (the key was revoked)."""
        self._held.pop(key, None)
