"""The relay, without I/O: bytes and a time go in, bytes go out through send().

What it does with each message (wire.py):
  RELAYED  from an endpoint bound to a member: rewrite the address field from
           destination to source and pass it to the destination member. The
           relay never looks past byte 8: nodes' traffic is encrypted end to end.
  INIT     a node's handshake: authenticate it (Noise IK), decide the join
           (control/registry.py), answer with its address or a refusal. Under
           a flood of INITs, one without a valid mac2 gets a cookie instead of
           any public-key work, and each source address is rate-limited
           (proto/cookie.py).
  DATA     a control message on a member's session: ping, bye.
Anything else, or anything that fails a check, is dropped and counted by reason.

Endpoints are opaque hashables from the adapter: (ip, port) for UDP, a stream
object for TCP. A member's endpoint is bound only by an authenticated message,
so a spoofed or replayed packet can never redirect its traffic.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import time
from collections import Counter
from typing import Callable

from ..control.directory import Directory, Entry
from ..control.paths import parse_endpoint
from ..control.ratelimit import NEEDS_COOKIE, HandshakeGuard, source_of
from ..control.registry import Refusal, Registry, check_routes
from ..proto import messages, wire
from ..proto.errors import ProtocolError
from ..proto.handshake import Identity, read_initiation
from ..proto.session import REJECT_AFTER_TIME, Session

log = logging.getLogger("tunneld.relay")

OFFLINE_AFTER = 20.0  # no authenticated word from a member for this long: offline
PENDING_TIMEOUT = 10.0  # an answered handshake must be confirmed by then
PUBLISH_DELAY = 0.2  # batch directory changes this long before pushing them
SEEN_FLUSH = 60.0  # last-seen times go to the store in one write this often (not one fsync per connect)
HINTS_PER_SECOND = 200  # unauthenticated hints are cheap but not free
# More INITs than this in a second and the relay is under load: cookies first. A join costs
# about half a millisecond of CPU here, so this bounds handshakes to ~10% of a core.
UNDER_LOAD_INITS = 200
# Under load, each source address (not port: a NAT holds many nodes) gets this many
# handshakes a second, in bursts of up to SOURCE_BURST (a site of nodes rejoining at once).
SOURCE_RATE = 100.0
SOURCE_BURST = 200.0


def format_endpoint(ep) -> str:
    if isinstance(ep, tuple):
        host, port = ep[0], ep[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return getattr(ep, "label", "tcp")


class Member:
    """A registered node that has connected since the relay started."""

    __slots__ = ("name", "addr", "address", "key", "session", "previous", "pending", "endpoint",
                 "online", "last_rx", "last_ts", "dir_version", "relayed_prefix", "rx_bytes",
                 "tx_bytes", "connected_since", "mtu", "routes", "lan")

    def __init__(self, name: str, address: str, key: bytes, mtu: int | None = None):
        self.name = name
        self.address = address
        self.addr = ipaddress.IPv4Address(address).packed
        self.key = key
        self.session: Session | None = None
        self.previous: Session | None = None
        self.pending: Session | None = None
        self.endpoint = None
        self.online = False
        self.last_rx = 0.0
        self.last_ts = b""
        self.dir_version: int | None = None
        self.relayed_prefix = wire.relayed_header(self.addr)
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.connected_since: float | None = None
        self.mtu = mtu or 0
        self.routes: tuple[str, ...] = ()  # what it offers to route; only while it is connected
        self.lan: tuple[str, ...] = ()  # its LAN endpoints, likewise

    def entry(self) -> Entry:
        return Entry(self.name, self.addr, self.key, self.online,
                     format_endpoint(self.endpoint) if self.endpoint is not None else "", self.mtu,
                     self.routes if self.online else (), self.lan if self.online else ())


class Relay:
    def __init__(self, identity: Identity, registry: Registry, send: Callable[[object, bytes], None],
                 now: float, *, wall: Callable[[], float] = time.time, listen: str = "",
                 relay_mtu: int = 1500):
        self.identity = identity
        self.registry = registry
        self.send = send
        self.wall = wall
        self.listen = listen
        self.sessions: dict[bytes, Session] = {}
        self.members: dict[bytes, Member] = {}  # by public key
        self.by_addr: dict[bytes, Member] = {}  # online members by overlay address
        self.by_endpoint: dict[object, Member] = {}
        self.drops: Counter = Counter()
        self.counts: Counter = Counter()
        self.relay_mtu = relay_mtu
        self.directory = Directory(time.time_ns() // 1000)
        self._mtus: dict[str, int] = {}  # underlay MTUs of the registered nodes, for the overlay MTU
        for rec in registry.store.nodes():
            if rec.public_key is not None:
                self.directory.set(Member(rec.name, rec.address, rec.public_key, rec.mtu).entry())
                if rec.mtu:
                    self._mtus[rec.name] = rec.mtu
        self._update_mtu()
        self.directory.publish()
        self._next_publish = now
        self._hint_budget = HINTS_PER_SECOND
        self.guard = HandshakeGuard(identity.public, now, UNDER_LOAD_INITS, SOURCE_RATE, SOURCE_BURST)
        self._seen: dict[str, float] = {}
        self._next_seen_flush = now + SEEN_FLUSH

    # -- the hot path ------------------------------------------------------------------

    def receive(self, data: bytes, ep, now: float) -> None:
        if not data:
            self.drops["empty"] += 1
            return
        t = data[0]
        if t == wire.RELAYED:
            src = self.by_endpoint.get(ep)
            if src is None:
                self.drops["relayed_unknown_source"] += 1
                self._hint(ep, wire.HINT_UNKNOWN_ENDPOINT, bytes(4))
                return
            dst = self.by_addr.get(data[4:8])
            if dst is None or len(data) <= wire.RELAYED_HEADER_LEN:
                self.drops["relayed_no_destination"] += 1
                return
            n = len(data)
            src.rx_bytes += n
            dst.tx_bytes += n
            self.send(dst.endpoint, src.relayed_prefix + data[8:])
        elif t == wire.DATA:
            self._on_data(data, ep, now)
        elif t == wire.INIT:
            self._on_init(data, ep, now)
        else:
            self.drops["bad_type"] += 1

    # -- control -----------------------------------------------------------------------

    def _on_data(self, data: bytes, ep, now: float) -> None:
        s = self.sessions.get(data[4:8])
        if s is None:
            self.drops["unknown_session"] += 1
            self._hint(ep, wire.HINT_UNKNOWN_SESSION, bytes(data[4:8]))
            return
        plaintext = s.open(data)
        if plaintext is None:
            self.drops[s.last_drop] += 1
            return
        m: Member = s.owner
        m.last_rx = now
        if s is m.pending:
            self._confirm(m, s, ep, now)
        elif ep != m.endpoint and s is m.session:
            self._bind(m, ep, now)  # the node's NAT mapping changed: follow it
        try:
            msg = messages.decode_control(plaintext)
        except ProtocolError:
            self.drops["bad_control"] += 1
            return
        kind = msg["t"]
        if kind == "ping":
            self._control(m, {"t": "pong", "n": msg["n"], "ep": format_endpoint(ep)})
            if msg["v"] != self.directory.version:
                m.dir_version = msg["v"]
                self._sync(m)
        elif kind == "bye":
            self._offline(m)
        else:  # includes "revoked", which only the relay sends
            self.drops["unexpected_control"] += 1

    def _control(self, m: Member, msg: dict) -> None:
        if m.session is None or m.endpoint is None:
            return
        sealed = m.session.seal(messages.encode(msg))
        if sealed is not None:
            self.send(m.endpoint, sealed)

    def _sync(self, m: Member) -> None:
        for msg in self.directory.messages_for(m.dir_version):
            self._control(m, msg)
        m.dir_version = self.directory.version

    # -- handshakes --------------------------------------------------------------------

    def _on_init(self, data: bytes, ep, now: float) -> None:
        try:
            wire.parse_init(data)
        except ProtocolError:
            self.drops["handshake_malformed"] += 1
            return
        if not wire.mac1_valid(data, self.identity.mac1_key):
            self.drops["handshake_wrong_key"] += 1
            self._hint(ep, wire.HINT_NOT_MY_KEY, bytes(4))
            return
        # Under load: no Diffie-Hellman for a sender that has not shown it receives at its
        # address, and no more than its share for one that has.
        host, source = source_of(ep)
        refused = self.guard.check(data, host, source, now)
        if refused:
            self.drops[refused] += 1
            if refused == NEEDS_COOKIE:
                self.counts["cookie_replies"] += 1
                self.send(ep, self.guard.cookie_reply(data, source, now))
            return
        self.counts["initiations_processed"] += 1  # the public-key work the cookies bound
        try:
            incoming = read_initiation(self.identity, data)
        except ProtocolError:
            self.drops["handshake_invalid"] += 1
            return
        try:
            request = messages.decode_join_request(incoming.payload)
        except ProtocolError:
            self.drops["join_malformed"] += 1
            return
        key = incoming.remote_public
        m = self.members.get(key)
        if m is not None and request["ts"] <= m.last_ts:
            self.drops["handshake_replay"] += 1
            return
        routes = check_routes(request["routes"], self.registry.network)
        if isinstance(routes, Refusal):
            decision = routes
        elif request["mtu"] < wire.MIN_UNDERLAY_MTU:  # it would shrink every node's MTU with its own
            decision = Refusal("bad_mtu", f"the node reports a path MTU of {request['mtu']}, below the "
                               f"{wire.MIN_UNDERLAY_MTU} a tunnel needs; fix the node's link MTU")
        else:
            decision = self.registry.join(key, request["name"], request["token"], self.wall(), request["mtu"])
        index = self._new_index()
        if isinstance(decision, Refusal):
            self.counts["join_refused"] += 1
            log.warning("refused %s from %s: %s", request["name"][:64], format_endpoint(ep), decision.code)
            reply = {"ok": False, "code": decision.code, "error": decision.message, "retry": decision.retry}
            resp, _ = incoming.accept(index, messages.encode(reply), now)
            self.send(ep, resp)
            return
        if m is None or m.address != decision.address or m.name != decision.name:
            if m is not None:
                self._forget(m)
            m = Member(decision.name, decision.address, key)
            self.members[key] = m
        m.last_ts = request["ts"]
        m.mtu = request["mtu"]
        m.routes = routes
        m.lan = tuple(ep for ep in request["lan"] if parse_endpoint(ep) is not None)
        self._mtus[m.name] = m.mtu
        self._update_mtu()
        if m.online:
            self.directory.set(m.entry())
        reply = {"ok": True, "name": m.name, "address": m.address,
                 "network": str(self.registry.network), "endpoint": format_endpoint(ep),
                 "mtu": self.directory.mtu, "relay_mtu": self.relay_mtu}
        resp, s = incoming.accept(index, messages.encode(reply), now)
        s.owner = m
        self.sessions[index] = s
        if m.pending is not None:
            self.sessions.pop(m.pending.local_index, None)
        m.pending = s
        self.counts["handshakes"] += 1
        self.send(ep, resp)

    def _update_mtu(self) -> None:
        """The overlay MTU: what fits the smallest underlay of any registered node, or the relay's.

        Every node's tunneld0 takes it, so that pods on every node get the same MTU from
        flannel; a full-size packet then fits every path."""
        underlay = min([self.relay_mtu, *self._mtus.values()])
        self.directory.mtu = underlay - wire.UDP_OVERHEAD_IPV4 - wire.TUNNEL_OVERHEAD

    def _new_index(self) -> bytes:
        while True:
            index = secrets.token_bytes(4)
            if index not in self.sessions:
                return index

    def _confirm(self, m: Member, s: Session, ep, now: float) -> None:
        """The node used its new session: it holds the keys. Make it current."""
        s.confirmed = True
        m.pending = None
        if m.previous is not None:
            self.sessions.pop(m.previous.local_index, None)
        m.previous, m.session = m.session, s
        self._bind(m, ep, now)

    def _bind(self, m: Member, ep, now: float) -> None:
        if m.endpoint is not None and self.by_endpoint.get(m.endpoint) is m:
            del self.by_endpoint[m.endpoint]
        other = self.by_endpoint.get(ep)
        if other is not None and other is not m:
            self._offline(other)  # that address now belongs to someone else
        m.endpoint = ep
        self.by_endpoint[ep] = m
        if not m.online:
            m.online = True
            m.connected_since = now
            self.counts["connects"] += 1
            log.info("%s (%s) connected from %s", m.name, m.address, format_endpoint(ep))
            self._seen[m.name] = self.wall()
        self.by_addr[m.addr] = m
        self.directory.set(m.entry())

    def _offline(self, m: Member) -> None:
        if m.endpoint is not None and self.by_endpoint.get(m.endpoint) is m:
            del self.by_endpoint[m.endpoint]
        if self.by_addr.get(m.addr) is m:
            del self.by_addr[m.addr]
        if m.online:
            m.online = False
            m.connected_since = None
            self._seen[m.name] = self.wall()
            log.info("%s (%s) went offline", m.name, m.address)
        self.directory.set(m.entry())

    def _forget(self, m: Member) -> None:
        self._offline(m)
        for s in (m.session, m.previous, m.pending):
            if s is not None:
                self.sessions.pop(s.local_index, None)
        m.session = m.previous = m.pending = None

    def _hint(self, ep, reason: int, index: bytes) -> None:
        if self._hint_budget > 0:
            self._hint_budget -= 1
            self.send(ep, wire.build_hint(reason, index))

    def revoke(self, name: str) -> bool:
        """Refuse this node's key from now on and drop its sessions; peers forget it."""
        record = self.registry.store.node_by_name(name)
        if record is None or not self.registry.store.revoke_node(name, self.wall()):
            return False
        m = self.members.pop(record.public_key, None)
        if m is not None:
            self._control(m, {"t": "revoked"})  # it stops at once, not at its next contact
            self._forget(m)
        self.directory.remove(ipaddress.IPv4Address(record.address).packed)
        self._mtus.pop(name, None)
        log.info("revoked %s (%s)", name, record.address)
        return True

    def flush_seen(self) -> None:
        """Write pending last-seen times (also called by the daemon when it stops)."""
        if self._seen:
            seen, self._seen = self._seen, {}
            self.registry.store.touch(seen)

    def link_closed(self, ep) -> None:
        """The adapter's TCP stream ep is gone."""
        m = self.by_endpoint.get(ep)
        if m is not None:
            self._offline(m)

    # -- time --------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        self._hint_budget = HINTS_PER_SECOND
        self.guard.tick(now)
        for m in self.members.values():
            if m.online and now - m.last_rx > OFFLINE_AFTER:
                self._offline(m)
            if m.pending is not None and now - m.pending.created > PENDING_TIMEOUT:
                self.sessions.pop(m.pending.local_index, None)
                m.pending = None
            for attr in ("previous", "session"):
                s = getattr(m, attr)
                if s is not None and now - s.created >= REJECT_AFTER_TIME:
                    self.sessions.pop(s.local_index, None)
                    setattr(m, attr, None)
                    if attr == "session":
                        self._offline(m)
        if self._seen and now >= self._next_seen_flush:
            self.flush_seen()
            self._next_seen_flush = now + SEEN_FLUSH
        if self.directory.dirty and now >= self._next_publish:
            self.directory.publish()
            self._next_publish = now + PUBLISH_DELAY
            for m in list(self.by_addr.values()):
                self._sync(m)

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict:
        nodes = []
        for e in sorted(self.directory.entries.values(), key=lambda e: e.name):
            m = self.members.get(e.key)
            nodes.append({
                "name": e.name,
                "address": str(ipaddress.IPv4Address(e.addr)),
                "connected": bool(m and m.online),
                "endpoint": e.endpoint or None,
                "mtu": e.mtu or None,
                "routes": list(e.routes),
                "rx_bytes": m.rx_bytes if m else 0,
                "tx_bytes": m.tx_bytes if m else 0,
            })
        return {"role": "relay", "listen": self.listen, "network": str(self.registry.network),
                "mtu": self.directory.mtu, "relay_mtu": self.relay_mtu,
                "public_key": self.identity.public.hex(), "nodes": nodes,
                "sessions": len(self.sessions),
                "counters": dict(self.counts), "drops": dict(self.drops)}
