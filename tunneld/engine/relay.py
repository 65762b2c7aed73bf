"""The relay, without I/O: messages and a time in; messages and store writes out.

In:   receive(data, ep, now)   a datagram or TCP frame from ep: a UDP address, or the
                               stream object of one node's TCP connection
      tick(now)                time passes
      written(w) / failed(w)   the store's answer to a write it was given
      revoke, issue_token, revoke_token   the operator's, through the control socket
Out:  send(ep, data)           at once, never blocking
      writes                   store writes (store/base.py), in order, for the daemon to
                               carry out off the packet path

What it does with each message (proto/wire.py):
  RELAYED  from an endpoint bound to a member: rewrite the address field from
           destination to source and pass it to the destination member. The relay
           never looks past byte 8: nodes' traffic is encrypted end to end.
  INIT     a node's join (joins.py): a flood guard first, then Noise IK, then the
           decision from memory (control/registry.py), answered with the node's address
           or a refusal; a new registration only once the store holds it.
  DATA     a control message on a member's session: ping (answered with a pong and
           whatever the member's directory lacks), bye; publishing's (publish_relay.py).
  MESH     from another relay of the network (engine/cluster.py, only with a shared
           store): a relayed datagram for a member homed here, or a liveness ping.
Anything else, or anything that fails a check, is dropped and counted by reason.

A member's endpoint is bound only by an authenticated message, so a spoofed or
replayed packet can never redirect its traffic. A member that can forge source
addresses could still send its own authenticated messages "from" anywhere, so a UDP
endpoint moves only after a round trip: the relay sends a proof, sealed for the member,
to the new address, and moves when the member echoes it from there ("ep-proof",
version.py). Members without that capability (0.2.0 and older) move at once, but never
onto an endpoint another member was heard from within ENDPOINT_HELD.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter, deque
from typing import Callable

from ..logs import event
from ..control.directory import Directory
from ..control.ratelimit import HandshakeGuard
from ..control.registry import Registry
from ..drops import Drop
from ..proto import endpoint, wire
from ..proto.handshake import Identity
from ..proto.mesh import MESH
from ..proto.version import OURS
from .channel import decode_control, seal_control
from .effects import Env
from .joins import Joins, Member
from .operator import OperatorCommands
from .sessions import IndexTable

log = logging.getLogger("tunneld.relay")

OFFLINE_AFTER = 20.0  # no authenticated word from a member for this long: offline
PENDING_TIMEOUT = 10.0  # an answered handshake must be confirmed by then
PUBLISH_DELAY = 0.2  # batch directory changes this long before pushing them
# ... and longer with many members: each publish costs a message to every member, so at most
# this many a second go out (2,000 members: a publish a second). A join storm then costs
# members x publishes, however many join, and each publish carries more of them.
PUBLISH_BUDGET = 2000
SEEN_FLUSH = 60.0  # last-seen times go to the store in one write this often (not one per connect)
HINTS_PER_SECOND = 200  # unauthenticated hints are cheap but not free
# More INITs than this in a second and the relay is under load: cookies first. A join costs
# about half a millisecond of CPU here, so this bounds handshakes to ~10% of a core.
UNDER_LOAD_INITS = 200
# Under load, each source address (not port: a NAT holds many nodes) gets this many
# handshakes a second, in bursts of up to SOURCE_BURST (a site of nodes rejoining at once).
SOURCE_RATE = 100.0
SOURCE_BURST = 200.0
ENDPOINT_HELD = 15.0  # a member heard from this recently keeps its endpoint (pings come every 5 s)
PROOF_EVERY = 1.0  # a member gets at most one endpoint proof a second
SNAPSHOT_EVERY = 2.0  # and a full directory at most this often: what a ping costs stays bounded


class Relay(OperatorCommands):
    def __init__(self, identity: Identity, registry: Registry, send: Callable[[object, bytes], None], env: Env,
                 now: float, *, listen: str = "", relay_mtu: int = 1500):
        self.identity = identity
        self.registry = registry
        self.send = send
        self.env = env
        self.listen = listen
        self.relay_mtu = relay_mtu
        self.table = IndexTable(env.random)
        self.members: dict[bytes, Member] = {}  # by public key
        self.by_addr: dict[bytes, Member] = {}  # online members by overlay address
        self.by_endpoint: dict[object, Member] = {}
        self.table_version = 0  # counts changes of the two above: relay workers follow them
        self.writes: deque = deque()  # for the store, in order
        self.drops: Counter = Counter()
        self.counts: Counter = Counter()
        self.directory = Directory(env.wall_ns() // 1000)
        self._mtus: dict[str, int] = {}  # underlay MTUs of the registered nodes, for the overlay MTU
        for rec in registry.nodes():
            if rec.public_key is not None:
                m = Member(rec.name, rec.address, rec.public_key, self.table, rec.mtu)
                m.lock = rec.lock or b""
                self.directory.set(m.entry())
                if rec.mtu:
                    self._mtus[rec.name] = rec.mtu
        self._update_mtu()
        self.directory.publish()
        self._next_publish = now
        self._hint_budget = HINTS_PER_SECOND
        self.guard = HandshakeGuard(identity.public, now, UNDER_LOAD_INITS, SOURCE_RATE, SOURCE_BURST,
                                    random=env.random)
        self.joins = Joins(self)
        self._seen: dict[str, float] = {}
        self._behind: set[Member] = set()  # members whose full directory waits for its interval
        self._next_seen_flush = now + SEEN_FLUSH
        self.cluster = None  # engine/cluster.py, when the store is shared by several relays
        self.publishing = None  # engine/publish_relay.py, set by the daemon

    def join_cluster(self, relay_id: str, codec, now: float) -> None:
        from .cluster import Cluster
        self.cluster = Cluster(self, relay_id, codec, now)
        self.directory.set_relays([self.listen])

    # -- the hot path --------------------------------------------------------------------

    def receive(self, data: bytes, ep, now: float) -> None:
        if not data:
            self.drops[Drop.EMPTY] += 1
            return
        t = data[0]
        if t == wire.RELAYED:
            src = self.by_endpoint.get(ep)
            if src is None:
                self.drops[Drop.RELAYED_UNKNOWN_SOURCE] += 1
                self.hint(ep, wire.HINT_UNKNOWN_ENDPOINT, bytes(4))
                return
            dst = self.by_addr.get(data[4:8])
            if dst is None or len(data) <= wire.RELAYED_HEADER_LEN:
                if dst is None and self.cluster is not None and len(data) > wire.RELAYED_HEADER_LEN \
                        and self.cluster.forward(src, data):
                    return
                self.drops[Drop.RELAYED_NO_DESTINATION] += 1
                return
            n = len(data)
            src.rx_bytes += n
            src.rx_packets += 1
            dst.tx_bytes += n
            self.send(dst.endpoint, src.relayed_prefix + data[8:])
        elif t == wire.DATA:
            self._on_data(data, ep, now)
        elif t == wire.INIT:
            self.joins.on_init(data, ep, now)
        elif t == MESH and self.cluster is not None:
            self.cluster.on_mesh(data, ep, now)
        else:
            self.drops[Drop.BAD_TYPE] += 1

    # -- control -------------------------------------------------------------------------

    def _on_data(self, data: bytes, ep, now: float) -> None:
        s = self.table.sessions.get(data[4:8])
        if s is None:
            self.drops[Drop.UNKNOWN_SESSION] += 1
            self.hint(ep, wire.HINT_UNKNOWN_SESSION, bytes(data[4:8]))
            return
        plaintext = s.open(data)
        if plaintext is None:
            self.drops[s.last_drop] += 1
            return
        m: Member = s.owner
        msg = decode_control(plaintext, self.drops)
        if s is m.keys.pending:
            m.keys.confirm(s)  # the node used its new session: it holds the keys
            if ep == m.resp_ep:  # where its handshake's answer went: a round trip
                self._bind(m, ep, now, proven=True)
            else:
                self._move(m, ep, msg, now)
        elif ep != m.endpoint and s is m.keys.current:
            self._move(m, ep, msg, now)  # the node's NAT mapping changed, or so it seems
        elif not m.online and s is m.keys.current and self.by_addr.get(m.addr) is None:
            # Timed out (OFFLINE_AFTER) or homed elsewhere for a while, and speaking again from
            # the endpoint it proved before: it is back.
            self._bind(m, ep, now, proven=True)
        if ep == m.endpoint:
            m.last_rx = now
        if msg is None:
            return
        kind = msg["t"]
        if kind == "ping":
            if ep != m.endpoint:
                return  # answered by the proof that went to ep
            wall_ms = int(self.env.wall() * 1000)  # the node's doctor compares clocks (0.4 on)
            self._control(m, {"t": "pong", "n": msg["n"], "ep": endpoint.format(ep), "now": wall_ms})
            if msg["v"] != self.directory.version:
                m.dir_version = msg["v"]
                self._sync(m, now)
        elif kind == "bye":
            self._offline(m)
        elif self.publishing is None or not self.publishing.from_node(m, msg, now):
            self.drops[Drop.UNEXPECTED_CONTROL] += 1  # includes "revoked", which only the relay sends

    def _control(self, m: Member, msg: dict, to=None) -> None:
        """msg on m's session, to its endpoint (or to `to`: an address it must prove it holds)."""
        to = to if to is not None else m.endpoint
        if to is None:
            return
        sealed = seal_control(m.keys, msg)
        if sealed is not None:
            self.send(to, sealed)

    def _sync(self, m: Member, now: float) -> None:
        msgs = self.directory.messages_for(m.dir_version)
        if msgs and msgs[0]["base"] is None:
            if now - m.snapshot_at < SNAPSHOT_EVERY:
                self.drops[Drop.SNAPSHOT_RATE_LIMITED] += 1
                self._behind.add(m)  # it gets one when its interval is over (tick), not at its next ping
                return
            m.snapshot_at = now
            self._behind.discard(m)
            self.counts["directory_snapshots"] += 1
        s = m.keys.current
        if s is not None and m.endpoint is not None:
            for payload in self.directory.encoded(msgs):  # encoded once for every member
                sealed = s.seal(payload)
                if sealed is not None:
                    self.send(m.endpoint, sealed)
        m.dir_version = self.directory.version

    def _move(self, m: Member, ep, msg: dict | None, now: float) -> None:
        """An authenticated message from m came from ep, not from its endpoint."""
        if not isinstance(ep, tuple) or not m.hello.has("ep-proof"):
            self._bind(m, ep, now, proven=not isinstance(ep, tuple))  # a TCP stream cannot be spoofed
            return
        if msg is not None and msg["t"] == "ping" and m.proof is not None and msg.get("proof") == m.proof \
                and ep == m.proof_ep:
            m.proof = None
            self._bind(m, ep, now, proven=True)
            return
        self.drops[Drop.ENDPOINT_UNPROVEN] += 1
        if now - m.proof_at < PROOF_EVERY:
            return
        m.proof, m.proof_ep, m.proof_at = self.env.random(8), ep, now
        self._control(m, {"t": "pong", "n": msg["n"] if msg and msg["t"] == "ping" else 0,
                          "ep": endpoint.format(ep), "proof": m.proof}, to=ep)

    # -- handshakes ----------------------------------------------------------------------

    # -- what the store said -------------------------------------------------------------

    def written(self, write) -> None:
        """The store holds write: an answer held for it may go out."""
        self.registry.written(write)
        self.joins.written(write)

    def failed(self, write, error: str) -> None:
        """The store refused or lost write: take it back (a node that joined asks again later)."""
        self.registry.failed(write)
        self.joins.failed(write)
        self.drops[Drop.STORE_ERROR] += 1
        log.error("the relay's store failed to write %s: %s", type(write).__name__, error)

    # -- members -------------------------------------------------------------------------

    def set_mtu(self, name: str, mtu: int | None) -> None:
        """A member's underlay MTU (None: it is gone), and the overlay MTU that follows: what
        fits the smallest underlay of any registered node, or the relay's. Every node's
        tunneld0 takes it, so that pods on every node get the same MTU from flannel; a
        full-size packet then fits every path."""
        if mtu is None:
            self._mtus.pop(name, None)
        else:
            self._mtus[name] = mtu
        self._update_mtu()

    def _update_mtu(self) -> None:
        underlay = min([self.relay_mtu, *self._mtus.values()])
        self.directory.mtu = underlay - wire.UDP_OVERHEAD_IPV4 - wire.TUNNEL_OVERHEAD

    def _bind(self, m: Member, ep, now: float, proven: bool) -> None:
        other = self.by_endpoint.get(ep)
        if other is not None and other is not m:
            if not proven and now - other.last_rx < ENDPOINT_HELD:
                self.drops[Drop.ENDPOINT_IN_USE] += 1
                return
            self._offline(other)  # that address now belongs to someone else
        if m.endpoint is not None and self.by_endpoint.get(m.endpoint) is m:
            del self.by_endpoint[m.endpoint]
        m.endpoint = ep
        self.by_endpoint[ep] = m
        self.table_version += 1
        if not m.online:
            m.online = True
            self.counts["connects"] += 1
            log.info("%s (%s) connected from %s", m.name, m.address, endpoint.format(ep),
                     extra=event("node_connected", node=m.name, address=m.address, endpoint=endpoint.format(ep)))
            self._seen[m.name] = self.env.wall()
        self.by_addr[m.addr] = m
        self.directory.set(m.entry())

    def _offline(self, m: Member, why: str = "went offline") -> None:
        self.table_version += 1
        if m.endpoint is not None and self.by_endpoint.get(m.endpoint) is m:
            del self.by_endpoint[m.endpoint]
        if self.by_addr.get(m.addr) is m:
            del self.by_addr[m.addr]
        if m.online:
            m.online = False
            self._seen[m.name] = self.env.wall()
            log.info("%s (%s) %s", m.name, m.address, why,
                     extra=event("node_offline", node=m.name, address=m.address, reason=why))
        self.directory.set(m.entry())  # (a member that moved away: cluster.py shows its new home next)

    def moved_away(self, m: Member) -> None:
        """m joined another relay of the network since: that one is its home now."""
        if m.online:
            self.counts["moved_away"] += 1
        self._offline(m, "is homed on another relay now")

    def forget(self, m: Member) -> None:
        self._offline(m)
        m.keys.drop()

    def hint(self, ep, reason: int, index: bytes) -> None:
        """Unauthenticated, so cheap and rate-limited: it may only prompt a new handshake."""
        if self._hint_budget > 0:
            self._hint_budget -= 1
            self.send(ep, wire.build_hint(reason, index))

    def flush_seen(self) -> None:
        """Last-seen times to the store (also when the daemon stops)."""
        if self._seen:
            seen, self._seen = self._seen, {}
            self.writes.append(self.registry.touch(seen))

    def bound(self, ep) -> bool:
        """Has an authenticated message from ep made it some member's endpoint?"""
        return ep in self.by_endpoint

    def link_closed(self, ep) -> None:
        """The adapter's TCP stream ep is gone."""
        m = self.by_endpoint.get(ep)
        if m is not None:
            self._offline(m)

    # -- time ----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        self._hint_budget = HINTS_PER_SECOND
        self.guard.tick(now)
        for m in self.members.values():
            if m.online and now - m.last_rx > OFFLINE_AFTER:
                self._offline(m)
            if m.keys.expire(now, PENDING_TIMEOUT):
                self._offline(m)
        if self._seen and now >= self._next_seen_flush:
            self.flush_seen()
            self._next_seen_flush = now + SEEN_FLUSH
        if self.directory.dirty and now >= self._next_publish:
            self.directory.publish()
            self._next_publish = now + max(PUBLISH_DELAY, len(self.by_addr) / PUBLISH_BUDGET)
            if self.cluster is not None and self.directory.last_delta is not None:
                self.cluster.presence_writes(self.directory.last_delta[2])
            for m in list(self.by_addr.values()):
                self._sync(m, now)
        if self.cluster is not None:
            self.cluster.tick(now)
        for m in [m for m in self._behind if now - m.snapshot_at >= SNAPSHOT_EVERY]:
            self._behind.discard(m)
            if self.by_addr.get(m.addr) is m and m.dir_version != self.directory.version:
                self._sync(m, now)

    # -- status --------------------------------------------------------------------------

    def status(self, now: float = 0.0) -> dict:
        nodes = []
        c = self.cluster
        for e in sorted(self.directory.entries.values(), key=lambda e: e.name):
            m = self.members.get(e.key)
            nodes.append({
                "name": e.name,
                "address": str(ipaddress.IPv4Address(e.addr)),
                "connected": bool(m and m.online),
                "endpoint": e.endpoint or None,
                "mtu": e.mtu or None,
                "routes": list(e.routes),
                "protocol": str(e.hello) if m else None,
                "rx_bytes": m.rx_bytes if m else 0,
                "tx_bytes": m.tx_bytes if m else 0,
                "rx_packets": m.rx_packets if m else 0,
                "home": (self.listen if m is not None and m.online else c.home_of(e.addr)) if c else None,
            })
        return {"role": "relay", "listen": self.listen, "network": str(self.registry.network),
                "network6": str(self.registry.network6) if self.registry.network6 else None,
                "mtu": self.directory.mtu, "relay_mtu": self.relay_mtu, "protocol": str(OURS),
                "public_key": self.identity.public.hex(), "nodes": nodes,
                "sessions": len(self.table),
                "relays": [{"id": self.listen, "listen": self.listen, "self": True, "health": "up", "rtt_ms": None},
                           *(c.status(now) if c else ())],
                "counters": dict(self.counts), "drops": dict(self.drops)}
