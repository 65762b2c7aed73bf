"""A node, without I/O: packets and a time go in, packets go out through NodeIO.

The send pipeline (from_tun), per packet read from the TUN device:
  1. route: the destination address names the peer (a dict lookup), or falls in a
     prefix a peer advertises (only with accept_routes);
  2. clamp: a TCP SYN's MSS is cut to what the path carries (mss.py);
  3. session: the peer's current transport session, or queue the packet and
     start a handshake with the peer;
  4. seal: next counter, AEAD (session.py);
  5. transmit: straight to the peer when a direct path works (control/paths.py),
     else wrapped in a RELAYED header, to the relay.

The receive pipeline (receive), per message from the relay:
  RELAYED -> the inner message of a peer: DATA is opened, checked (replay
             window; the inner source address must be the peer's, or in a
             prefix it advertises that we accept) and written to the TUN
             device; INIT/RESP/COOKIE advance a handshake with that peer.
  DATA    -> a control message from the relay (pong, directory, revoked).
  RESP    -> the relay's answer to our join handshake.
  HINT    -> the relay lost our session: handshake again (rate-limited).
  COOKIE  -> the relay is under a handshake flood: keep its cookie, send the
             INIT again with mac2 (proto/cookie.py).
Messages straight from a peer (hole-punched UDP) are DATA, INIT, RESP or COOKIE of
the same sessions; a peer is recognised by its session index or its key, never by
its address, and any authenticated packet teaches us where it can be reached.
Under a flood of INITs a node asks for cookies before any public-key work, as
the relay does.
Every drop is counted by reason in `drops`; nothing here raises on bad input.

The relay link reconnects forever, with backoff and jitter, over UDP first and
over TCP after UDP has failed twice. Peer sessions do not depend on it: while
the relay is away they keep their keys, and traffic resumes when it returns.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable, Protocol

from ..control.backoff import Backoff
from ..control.directory import DirectoryMirror, Entry
from ..control.paths import PathState, parse_endpoint
from ..control.ratelimit import NEEDS_COOKIE, HandshakeGuard, source_of
from ..proto import messages, wire
from ..proto.cookie import CookieJar
from ..proto.errors import ProtocolError
from ..proto.handshake import Identity, Initiation, read_initiation, tai64n, TIMESTAMP_LEN
from ..proto.session import Session
from .mss import clamp

log = logging.getLogger("tunneld.node")


class _RelayEndpoint:
    """The sentinel endpoint 'the relay, over whichever transport is up'."""

    def __repr__(self):
        return "RELAY"


RELAY = _RelayEndpoint()

PING_INTERVAL = 5.0  # also keeps the NAT mapping to the relay open
FAST_PINGS = 3  # after (re)connecting, ping every second a few times: fresh RTT, quick directory repair
RELAY_DEAD_AFTER = 16.0  # no word from the relay for this long: handshake again
HANDSHAKE_RETRY = 1.0  # peer handshake retransmission
HANDSHAKE_ATTEMPTS = 15  # then drop the queued packets; the next packet starts again
PENDING_TIMEOUT = 10.0
KEEPALIVE = 10.0  # answer received traffic with an empty packet if we sent nothing
UNANSWERED = 15.0  # sending for this long and hearing nothing: the peer lost its keys, handshake
REHANDSHAKE_INTERVAL = 1.0  # at most this often per peer for traffic we cannot read
PROBE_INTERVAL = 5.0  # round-trip probes over the relay while a peer is in use
PROBES_KEPT = 32  # probes awaiting a reply, per peer
QUEUE_LIMIT = 128  # packets held per peer while its handshake runs
HINT_INTERVAL = 1.0
# A node's share of the relay's flood defence (engine/relay.py): peers rekey every two minutes,
# so more than this many INITs a second is a flood, and then each source needs a cookie and
# gets at most PEER_SOURCE_RATE handshakes a second.
PEER_UNDER_LOAD_INITS = 50
PEER_SOURCE_RATE = 10.0
PEER_SOURCE_BURST = 20.0
TCP_AFTER_FAILURES = 2


OVERHEAD = wire.UDP_OVERHEAD_IPV4 + wire.TUNNEL_OVERHEAD  # underlay MTU - overlay MTU
VXLAN_OVERHEAD = 50  # flannel's: outer IPv4 + UDP + VXLAN + inner Ethernet
TCPIP_HEADERS = 40


class NodeIO(Protocol):
    def send(self, ep, data: bytes) -> None: ...
    def write_tun(self, packet: bytes) -> None: ...
    def joined(self, assignment: "Assignment") -> None: ...
    def refused(self, code: str, message: str) -> None: ...
    def relay_transport(self, tcp: bool) -> None: ...
    def set_mtu(self, mtu: int) -> None: ...
    def set_routes(self, prefixes: list[str]) -> None: ...


@dataclass(frozen=True)
class Assignment:
    name: str
    address: str
    network: str

    @property
    def interface_address(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.address}/{ipaddress.IPv4Network(self.network).prefixlen}")

    @classmethod
    def from_cache(cls, cache, relay_key_hex: str | None = None) -> "Assignment | None":
        """The assignment a node saved (state.py's node.json), if it is whole and, when
        relay_key_hex is given, from that relay; None for anything else."""
        if not isinstance(cache, dict) or (relay_key_hex is not None and cache.get("relay_key") != relay_key_hex):
            return None
        name, address, network = cache.get("name"), cache.get("address"), cache.get("network")
        if not all(isinstance(v, str) and 0 < len(v) <= 64 for v in (name, address, network)):
            return None
        try:
            if ipaddress.IPv4Address(address) not in ipaddress.IPv4Network(network):
                return None
        except ValueError:
            return None
        return cls(name, address, network)


class Peer:
    __slots__ = ("name", "addr", "address", "key", "online", "endpoint", "tx", "previous", "pending",
                 "initiation", "hs_attempts", "hs_next", "last_ts", "queue", "tx_bytes", "rx_bytes",
                 "last_rx", "last_tx", "rtt_relay", "probe_seq", "probe_at", "probes", "relayed_prefix",
                 "tx_ep", "tx_prefix", "path", "lan", "underlay_mtu", "routes", "path_mtu", "direct_mtu", "mss",
                 "vxlan_mss", "sources", "unreadable_at", "cookies", "cookie_resent")

    def __init__(self, entry: Entry, now: float):
        self.name = entry.name
        self.addr = entry.addr
        self.address = str(ipaddress.IPv4Address(entry.addr))
        self.key = entry.key
        self.online = entry.online
        self.endpoint = entry.endpoint
        self.tx: Session | None = None  # current: we send with it
        self.previous: Session | None = None  # still accepted while in-flight packets drain
        self.pending: Session | None = None  # we answered its handshake; unconfirmed
        self.initiation: Initiation | None = None
        self.hs_attempts = 0
        self.hs_next = 0.0
        self.last_ts = b""
        self.queue: deque = deque(maxlen=QUEUE_LIMIT)
        self.tx_bytes = 0
        self.rx_bytes = 0
        self.last_rx = 0.0
        self.last_tx = 0.0
        self.rtt_relay: float | None = None
        self.probe_seq = 0
        self.probe_at = 0.0  # engine time of the last probe over the relay, for the interval
        self.probes: dict[int, tuple] = {}  # seq -> (where it went, clock reading when sent)
        self.relayed_prefix = wire.relayed_header(entry.addr)
        self.cookies = CookieJar(entry.key)  # the peer's cookie, should it be under a flood
        self.cookie_resent: Initiation | None = None
        # Where data goes now: the relay (with the relayed header), or a direct endpoint.
        self.tx_ep = RELAY
        self.tx_prefix = self.relayed_prefix
        self.path = PathState()
        self.lan = entry.lan
        self.path.set_candidates(self.candidates(), now)
        self.underlay_mtu = entry.mtu
        self.routes = entry.routes
        self.path_mtu = 0  # the largest inner packet the relayed path carries; see Node._paths()
        self.direct_mtu = 0  # likewise direct (no relay header; no relay link on the way)
        self.mss = 0xFFFF  # clamp limits for SYNs towards it, direct and inside flannel's VXLAN
        self.vxlan_mss = 0xFFFF
        self.sources: tuple = ()  # (network, mask) pairs it may send from besides its address
        self.unreadable_at = -REHANDSHAKE_INTERVAL  # when we last handshook over data we could not open

    def update(self, entry: Entry, now: float) -> None:
        self.name, self.online, self.endpoint = entry.name, entry.online, entry.endpoint
        self.underlay_mtu, self.routes, self.lan = entry.mtu, entry.routes, entry.lan
        self.path.set_candidates(self.candidates(), now)

    def candidates(self) -> list[tuple]:
        """Where it may be reached directly: the address the relay sees, then its LAN addresses."""
        eps = [parse_endpoint(self.endpoint), *(parse_endpoint(a) for a in self.lan)]
        return [ep for ep in eps if ep is not None]

    @property
    def rtt(self) -> float | None:
        ep = self.tx_ep
        return self.rtt_relay if ep is RELAY else self.path.rtt.get(ep)


class RelayLink:
    __slots__ = ("key", "session", "previous", "initiation", "next_attempt", "backoff", "failures",
                 "up", "last_rx", "ping_seq", "ping_at", "ping_sent", "rtt", "hint_at", "seen_as", "tcp",
                 "wrong_key_hints", "ever_joined", "fast_pings", "good_tcp", "cookies", "cookie_resent")

    def __init__(self, key: bytes, backoff: Backoff):
        self.key = key
        self.session: Session | None = None
        self.previous: Session | None = None
        self.initiation: Initiation | None = None
        self.next_attempt = 0.0
        self.backoff = backoff
        self.failures = 0
        self.up = False
        self.last_rx = 0.0
        self.ping_seq = 0
        self.ping_at = 0.0  # engine time of the last ping, for the interval
        self.ping_sent = 0.0  # clock reading, for the round trip
        self.rtt: float | None = None
        self.hint_at = -HINT_INTERVAL
        self.seen_as = ""
        self.tcp = False
        self.good_tcp = False  # the transport of the last successful handshake
        self.wrong_key_hints = 0
        self.ever_joined = False
        self.fast_pings = 0
        self.cookies = CookieJar(key)
        self.cookie_resent: Initiation | None = None  # the INIT we already re-sent with a cookie


class Node:
    def __init__(self, identity: Identity, relay_public: bytes, name: str, credential: bytes | None,
                 io: NodeIO, now: float, *, suite: int = wire.SUITE_AESGCM, underlay_mtu: int = 1500,
                 wall_ns: Callable[[], int] = time.time_ns, backoff: Backoff | None = None,
                 assignment: Assignment | None = None, relay_label: str = "",
                 clock: Callable[[], float] = time.monotonic, mtu: int | None = None,
                 routes: tuple[str, ...] = (), accept_routes: bool = False,
                 protected: tuple[str, ...] = (), lan: tuple[str, ...] = ()):
        self.identity = identity
        self.name = name
        self.credential = credential
        self.io = io
        self.suite = suite
        self.underlay_mtu = underlay_mtu
        self.wall_ns = wall_ns
        self.assignment = assignment
        self.relay_label = relay_label
        # `now` arguments are per batch of messages; round trips need a reading of their own.
        self.clock = clock
        self.relay = RelayLink(relay_public, backoff or Backoff())
        # MTU: the interface's, the overlay's as the relay computes it, and the relay's underlay.
        self.mtu = mtu or underlay_mtu - OVERHEAD
        self.network_mtu = 0
        self.relay_mtu = 0
        self._mtu_settled = False  # after the first join, the interface MTU only ever goes down
        # Routes: those we offer, whether we take others', and addresses no route may capture
        # (the relay's: our own way to it must never run through the overlay).
        self.routes = tuple(routes)
        self.accept_routes = accept_routes
        self.protected = tuple(ipaddress.IPv4Address(a) for a in protected)
        self.route_table: list[tuple[int, int, Peer]] = []
        self.accepted: list[str] = []
        self.lan = tuple(lan)  # our LAN endpoints, offered to peers as direct candidates
        self.sessions: dict[bytes, Session] = {}
        self.peers: dict[bytes, Peer] = {}
        self.peers_by_key: dict[bytes, Peer] = {}
        self._initiating: dict[bytes, Peer] = {}  # our pending INITs, by index: a RESP may come direct
        self._overlay: tuple[int, int] | None = None  # (network, mask): never a direct endpoint
        self._endpoint_ok: dict[tuple, bool] = {}
        self.mirror = DirectoryMirror()
        self.drops: Counter = Counter()
        self.counts: Counter = Counter()
        self.stopped = False
        self._last_ts = b""
        self._guard = HandshakeGuard(identity.public, now, PEER_UNDER_LOAD_INITS, PEER_SOURCE_RATE,
                                     PEER_SOURCE_BURST, sources=4096)

    # -- the hot path: TUN -> wire -----------------------------------------------------

    def from_tun(self, packet: bytes, now: float) -> None:
        meta = b""
        if packet and packet[0] == wire.PARTIAL and len(packet) > wire.PARTIAL_HEADER_LEN:
            # a checksum left to the receiver's kernel; offload.py keeps its place below 256
            meta = bytes((packet[2], packet[4], 0))
            packet = packet[wire.PARTIAL_HEADER_LEN:]
        if len(packet) < 20 or packet[0] >> 4 != 4:
            self.drops["tun_not_ipv4"] += 1
            return
        peer = self.peers.get(packet[16:20])
        if peer is None:
            peer = self._route(packet[16:20]) if self.route_table else None
            if peer is None:
                self.drops["tun_no_peer"] += 1
                return
        proto = packet[9]
        if proto == 6 or proto == 17:
            packet = clamp(packet, peer.mss, peer.vxlan_mss)
        s = peer.tx
        if s is None:
            peer.queue.append(packet)
            if peer.initiation is None:
                self._initiate(peer, now)
            return
        sealed = s.seal(packet, peer.tx_prefix, meta)
        if sealed is None:
            self.drops["session_exhausted"] += 1
            return
        peer.tx_bytes += len(packet)
        peer.last_tx = now
        self.io.send(peer.tx_ep, sealed)

    # -- the hot path: wire -> TUN -----------------------------------------------------

    def receive(self, data: bytes, ep, now: float) -> None:
        if ep is not RELAY:
            self._direct(data, ep, now)
            return
        t = data[0] if data else 0
        if t == wire.RELAYED:
            peer = self.peers.get(data[4:8])
            if peer is None or len(data) <= wire.RELAYED_HEADER_LEN:
                self.drops["relayed_unknown_peer"] += 1
                return
            self._from_peer(peer, data[8:], now, RELAY)
        elif t == wire.DATA:
            self._relay_data(data, now)
        elif t == wire.RESP:
            self._relay_resp(data, now)
        elif t == wire.HINT:
            self._relay_hint(data, now)
        elif t == wire.COOKIE:
            self._take_cookie(self.relay, data, now, RELAY)
        else:
            self.drops["bad_type"] += 1

    def _direct(self, data: bytes, ep: tuple, now: float) -> None:
        """A message straight from a peer's endpoint (not through the relay)."""
        ok = self._endpoint_ok.get(ep)
        if ok is None:
            ok = self._check_endpoint(ep)
        if not ok:
            self.drops["direct_bad_source"] += 1
            return
        t = data[0] if data else 0
        if t == wire.DATA:
            s = self.sessions.get(data[4:8])
            peer = s.owner if s is not None else None
            if peer is None or peer is self.relay:
                self.drops["direct_unknown_session"] += 1
                return
            self._from_peer(peer, data, now, ep)
        elif t == wire.INIT:
            self._peer_init(None, data, now, ep)
        elif t == wire.RESP:
            peer = self._initiating.get(data[8:12])
            if peer is None:
                self.drops["unexpected_response"] += 1
                return
            self._peer_resp(peer, data, now, ep)
        elif t == wire.COOKIE:
            peer = self._initiating.get(data[4:8])
            if peer is None:
                self.drops["unexpected_cookie"] += 1
                return
            self._take_cookie(peer, data, now, peer.tx_ep, peer.tx_prefix)
        else:
            self.drops["direct_bad_type"] += 1

    def _check_endpoint(self, ep: tuple) -> bool:
        """A direct endpoint may not lie inside the overlay: that would tunnel the tunnel."""
        try:
            n = int(ipaddress.IPv4Address(ep[0]))
        except (ValueError, TypeError, IndexError):
            return False
        ok = self._overlay is None or n & self._overlay[1] != self._overlay[0]
        if len(self._endpoint_ok) > 1024:
            self._endpoint_ok.clear()
        self._endpoint_ok[ep] = ok
        return ok

    def _from_peer(self, peer: Peer, msg: bytes, now: float, via) -> None:
        t = msg[0]
        if t == wire.DATA:
            s, plaintext = self._open(msg, peer)
            if plaintext is None:
                if s is None:
                    self._unreadable(peer, now)
                return
            peer.last_rx = now
            if via is not RELAY and via != peer.tx_ep:
                peer.path.heard(via, now)  # a way to it we may not know yet: probe it
            if not s.confirmed:
                self._confirm(peer, s, now)
            if not plaintext:
                return  # keepalive
            first = plaintext[0]
            if first >> 4 == 4:
                if len(plaintext) >= 20 and (plaintext[12:16] == peer.addr or
                                             (peer.sources and _within(plaintext[12:16], peer.sources))):
                    peer.rx_bytes += len(plaintext)
                    if msg[1]:  # a deeper checksum, left for our kernel (wire.py, offload.py)
                        plaintext = bytes((wire.PARTIAL, 0, msg[1], 0, msg[2])) + plaintext
                    self.io.write_tun(plaintext)
                else:
                    self.drops["spoofed_source"] += 1
            elif first == wire.PROBE_REQUEST and len(plaintext) == wire.PROBE_LEN:
                # Answer the way it came: that is the path being tested.
                sealed = s.seal(bytes((wire.PROBE_REPLY,)) + plaintext[1:],
                                peer.relayed_prefix if via is RELAY else b"")
                if sealed is not None:
                    self.io.send(via, sealed)
            elif first == wire.PROBE_REPLY and len(plaintext) == wire.PROBE_LEN:
                sent = peer.probes.pop(int.from_bytes(plaintext[1:], "big"), None)
                if sent is not None:
                    where, at = sent
                    rtt = self.clock() - at
                    if where is RELAY:
                        peer.rtt_relay = rtt
                    elif peer.path.replied(where, rtt, now):
                        self._retarget(peer, now)
            else:
                self.drops["bad_inner_packet"] += 1
        elif t == wire.INIT:
            self._peer_init(peer, msg, now, via)
        elif t == wire.RESP:
            self._peer_resp(peer, msg, now, via)
        elif t == wire.COOKIE:
            self._take_cookie(peer, msg, now, peer.tx_ep, peer.tx_prefix)
        else:
            self.drops["bad_type"] += 1

    def _retarget(self, peer: Peer, now: float) -> None:
        """Send to the peer directly while a direct path works, through the relay otherwise."""
        direct = peer.path.direct(now)
        ep = RELAY if direct is None else direct
        if ep != peer.tx_ep:
            log.info("path to %s: %s", peer.name, "relay" if direct is None else
                     f"direct via {direct[0]}:{direct[1]}")
            self.counts["path_changes"] += 1
            peer.tx_ep = ep
            peer.tx_prefix = peer.relayed_prefix if direct is None else b""

    def _probe(self, peer: Peer, via, now: float) -> None:
        if len(peer.probes) >= PROBES_KEPT:
            peer.probes.clear()
        peer.probe_seq += 1
        peer.probes[peer.probe_seq] = (via, self.clock())
        sealed = peer.tx.seal(bytes((wire.PROBE_REQUEST,)) + peer.probe_seq.to_bytes(8, "big"),
                              peer.relayed_prefix if via is RELAY else b"")
        if sealed is not None:
            self.io.send(via, sealed)

    def _unreadable(self, peer: Peer, now: float) -> None:
        """Data from a peer for a session we do not have: we restarted, or it holds keys we
        dropped. Rather than let it send into the void until its session expires, offer new
        keys (an authenticated handshake; at most once a second per peer)."""
        if peer.initiation is None and now - peer.unreadable_at >= REHANDSHAKE_INTERVAL:
            peer.unreadable_at = now
            self._initiate(peer, now)

    def _route(self, dst: bytes) -> Peer | None:
        """Longest-prefix match over the routes we accepted from peers."""
        n = int.from_bytes(dst, "big")
        for network, mask, peer in self.route_table:
            if n & mask == network:
                return peer
        return None

    def _open(self, msg: bytes, owner) -> tuple[Session | None, bytes | None]:
        """The session msg names, if it belongs to owner, and msg's plaintext; drops counted."""
        s = self.sessions.get(msg[4:8])
        if s is None or s.owner is not owner:
            self.drops["unknown_session"] += 1
            return None, None
        plaintext = s.open(msg)
        if plaintext is None:
            self.drops[s.last_drop] += 1
        return s, plaintext

    # -- peer sessions -----------------------------------------------------------------

    def _send_peer(self, peer: Peer, plaintext: bytes, now: float) -> None:
        s = peer.tx
        if s is None:
            return
        sealed = s.seal(plaintext, peer.tx_prefix)
        if sealed is not None:
            peer.last_tx = now
            self.io.send(peer.tx_ep, sealed)

    def _new_index(self) -> bytes:
        while True:
            index = secrets.token_bytes(4)
            if index not in self.sessions:
                return index

    def _timestamp(self) -> bytes:
        # Strictly increasing, so that peers never take a fresh handshake for a replay.
        ts = tai64n(self.wall_ns())
        if ts <= self._last_ts:
            ts = (int.from_bytes(self._last_ts, "big") + 1).to_bytes(TIMESTAMP_LEN, "big")
        self._last_ts = ts
        return ts

    def _initiate(self, peer: Peer, now: float) -> None:
        init = Initiation(self.identity, peer.key, self.suite, self._new_index(), self._timestamp(), now)
        if peer.initiation is not None:
            self._initiating.pop(peer.initiation.local_index, None)
        self._initiating[init.local_index] = peer
        peer.initiation = init
        peer.hs_attempts += 1
        peer.hs_next = now + HANDSHAKE_RETRY * (0.8 + 0.4 * secrets.randbelow(1000) / 1000)
        self.counts["peer_handshakes_sent"] += 1
        self.io.send(peer.tx_ep, peer.tx_prefix + peer.cookies.stamp(init.message, now))

    def _peer_init(self, peer: Peer | None, msg: bytes, now: float, via) -> None:
        if not self._init_allowed(peer, msg, now, via):
            return
        self.counts["peer_initiations_processed"] += 1
        try:
            incoming = read_initiation(self.identity, msg)
        except ProtocolError:
            self.drops["handshake_invalid"] += 1
            return
        if peer is None:  # straight from an endpoint: the key says who it is
            peer = self.peers_by_key.get(incoming.remote_public)
            if peer is None:
                self.drops["handshake_unknown_key"] += 1
                return
        if incoming.remote_public != peer.key:
            self.drops["handshake_wrong_peer"] += 1
            return
        ts = incoming.payload
        if len(ts) != TIMESTAMP_LEN or ts <= peer.last_ts:
            self.drops["handshake_replay"] += 1
            return
        peer.last_ts = ts
        index = self._new_index()
        resp, s = incoming.accept(index, b"", now)
        s.owner = peer
        self.sessions[index] = s
        if peer.pending is not None:
            self.sessions.pop(peer.pending.local_index, None)
        peer.pending = s
        self.io.send(via, (peer.relayed_prefix if via is RELAY else b"") + resp)

    def _init_allowed(self, peer: Peer | None, msg: bytes, now: float, via) -> bool:
        """The relay's flood defence, on a node: under load, no Diffie-Hellman for an INIT
        without a cookie, and a share per source (proto/cookie.py)."""
        try:
            wire.parse_init(msg)
        except ProtocolError:
            self.drops["handshake_invalid"] += 1
            return False
        if not wire.mac1_valid(msg, self.identity.mac1_key):
            self.drops["handshake_invalid"] += 1
            return False
        # Through the relay, the relay vouches for the sender's overlay address.
        host, source = (peer.addr, peer.addr) if via is RELAY else source_of(via)
        refused = self._guard.check(msg, host, source, now)
        if refused:
            self.drops[refused] += 1
            if refused == NEEDS_COOKIE:
                reply = self._guard.cookie_reply(msg, source, now)
                self.io.send(via, (peer.relayed_prefix if via is RELAY else b"") + reply)
            return False
        return True

    def _take_cookie(self, holder, msg: bytes, now: float, ep, prefix: bytes = b"") -> None:
        """A cookie for our INIT in flight to holder (a Peer, or the RelayLink): keep it and
        send that INIT again with mac2, once per INIT, so that a cookie never makes us send more."""
        init = holder.initiation
        if init is None or msg[4:8] != init.local_index:
            self.drops["unexpected_cookie"] += 1
            return
        if not holder.cookies.take(msg, init.message, now):
            self.drops["bad_cookie"] += 1
            return
        self.counts["cookies"] += 1
        if holder.cookie_resent is not init:
            holder.cookie_resent = init
            self.io.send(ep, prefix + holder.cookies.stamp(init.message, now))

    def _peer_resp(self, peer: Peer, msg: bytes, now: float, via) -> None:
        init = peer.initiation
        if init is None or msg[8:12] != init.local_index:
            self.drops["unexpected_response"] += 1
            return
        try:
            s, _ = init.complete(msg, now)
        except ProtocolError:
            self.drops["handshake_invalid"] += 1
            return
        peer.initiation = None
        self._initiating.pop(init.local_index, None)
        peer.hs_attempts = 0
        s.owner = peer
        self.sessions[s.local_index] = s
        self._install(peer, s, now)
        if not self._flush(peer, now):
            self._send_peer(peer, b"", now)  # confirms the session to the responder

    def _confirm(self, peer: Peer, s: Session, now: float) -> None:
        s.confirmed = True
        if peer.pending is s:
            peer.pending = None
        self._install(peer, s, now)
        self._flush(peer, now)

    def _install(self, peer: Peer, s: Session, now: float) -> None:
        if peer.previous is not None:
            self.sessions.pop(peer.previous.local_index, None)
        peer.previous, peer.tx = peer.tx, s
        peer.last_rx = now  # the handshake itself was word from the peer

    def _flush(self, peer: Peer, now: float) -> bool:
        sent = bool(peer.queue)
        while peer.queue:
            packet = peer.queue.popleft()
            sealed = peer.tx.seal(packet, peer.tx_prefix)
            if sealed is None:
                break
            peer.tx_bytes += len(packet)
            self.io.send(peer.tx_ep, sealed)
        if sent:
            peer.last_tx = now
        return sent

    def _drop_sessions(self, peer: Peer) -> None:
        for s in (peer.tx, peer.previous, peer.pending):
            if s is not None:
                self.sessions.pop(s.local_index, None)
        if peer.initiation is not None:
            self._initiating.pop(peer.initiation.local_index, None)
        peer.tx = peer.previous = peer.pending = peer.initiation = None

    def _sync_peers(self, now: float) -> None:
        own = self.identity.public
        entries = {a: e for a, e in self.mirror.entries.items() if e.key != own}
        for addr, peer in list(self.peers.items()):
            e = entries.get(addr)
            if e is None or e.key != peer.key:
                self._drop_sessions(peer)
                del self.peers[addr]
                self.peers_by_key.pop(peer.key, None)
        for addr, e in entries.items():
            peer = self.peers.get(addr)
            if peer is None:
                peer = self.peers[addr] = Peer(e, now)
                self.peers_by_key[e.key] = peer
            else:
                peer.update(e, now)
        self._paths()
        if self.accept_routes:
            self._accept_routes()

    def _paths(self) -> None:
        """Each peer's path MTU, and the MSS that fits it, from the underlays on the way."""
        own = self.underlay_mtu
        relay = self.relay_mtu or own
        for peer in self.peers.values():
            peer.path_mtu = min(own, relay, peer.underlay_mtu or own) - OVERHEAD
            peer.direct_mtu = min(own, peer.underlay_mtu or own) - OVERHEAD + wire.RELAYED_HEADER_LEN
            limit = min(peer.path_mtu, self.mtu)
            peer.mss = limit - TCPIP_HEADERS
            peer.vxlan_mss = limit - VXLAN_OVERHEAD - TCPIP_HEADERS

    def _accept_routes(self) -> None:
        own = [ipaddress.IPv4Network(r) for r in self.routes]
        table = []
        for peer in self.peers.values():
            sources = []
            for text in peer.routes:
                prefix = ipaddress.IPv4Network(text)
                if any(a in prefix for a in self.protected) or any(prefix.overlaps(o) for o in own):
                    self.drops["route_refused"] += 1
                    continue  # it would capture our way to the relay, or loop with our own
                entry = (int(prefix.network_address), int(prefix.netmask))
                sources.append(entry)
                table.append((prefix.prefixlen, peer.name, *entry, peer))
            peer.sources = tuple(sources)
        table.sort(key=lambda t: (-t[0], t[1]))  # longest prefix first; ties go to the lower name
        self.route_table = [(net, mask, peer) for _, _, net, mask, peer in table]
        accepted = sorted({f"{ipaddress.IPv4Address(net)}/{bin(mask).count('1')}"
                           for net, mask, _ in self.route_table})
        if accepted != self.accepted:
            self.accepted = accepted
            self.io.set_routes(accepted)

    def _adopt_mtu(self, network_mtu: int) -> None:
        """Take the overlay MTU: any value at the first join, then only ever a lower one (a
        smaller node joined), so that the interface never grows under running pods."""
        self.network_mtu = network_mtu
        target = min(self.underlay_mtu - OVERHEAD, network_mtu or self.mtu)
        if target != self.mtu and (target < self.mtu or not self._mtu_settled):
            if self._mtu_settled:
                log.warning("the overlay MTU fell to %d (a node with a smaller path joined): lowering "
                            "the interface from %d; restart flannel on this node so that pods follow",
                            target, self.mtu)
            self.mtu = target
            self.io.set_mtu(target)
        self._mtu_settled = True
        self._paths()

    # -- the relay link ----------------------------------------------------------------

    def _relay_handshake(self, now: float) -> None:
        r = self.relay
        if not r.up:
            # Reconnecting: start with the transport that worked last, and switch between UDP
            # and TCP after every TCP_AFTER_FAILURES unanswered attempts. While the link is up
            # (a rekey), stay on the transport that works.
            flip = (r.failures // TCP_AFTER_FAILURES) % 2 == 1
            tcp = r.good_tcp != flip
            if tcp != r.tcp:
                r.tcp = tcp
                self.io.relay_transport(tcp)
        payload = messages.encode({"ts": self._timestamp(), "name": self.name,
                                   "token": self.credential, "mtu": self.underlay_mtu,
                                   "routes": list(self.routes), "lan": list(self.lan)})
        r.initiation = Initiation(self.identity, r.key, self.suite, self._new_index(), payload, now)
        r.next_attempt = now + r.backoff.next()
        self.counts["relay_handshakes_sent"] += 1
        self.io.send(RELAY, r.cookies.stamp(r.initiation.message, now))

    def _relay_resp(self, data: bytes, now: float) -> None:
        r = self.relay
        init = r.initiation
        if init is None or data[8:12] != init.local_index:
            self.drops["unexpected_response"] += 1
            return
        try:
            s, payload = init.complete(data, now)
            reply = messages.decode_join_reply(payload)
        except ProtocolError:
            self.drops["handshake_invalid"] += 1
            return
        r.initiation = None
        if not reply["ok"]:
            if reply["retry"]:
                log.warning("the relay cannot take this node now (%s); retrying", reply["error"])
                return
            self.stopped = True
            self.io.refused(reply["code"], reply["error"])
            return
        r.failures = 0
        r.backoff.reset()
        r.wrong_key_hints = 0
        r.good_tcp = r.tcp
        s.owner = r
        self.sessions[s.local_index] = s
        if r.previous is not None:
            self.sessions.pop(r.previous.local_index, None)
        r.previous, r.session = r.session, s
        r.last_rx = now
        if not r.up:
            log.info("connected to the relay over %s as %s (%s)", "TCP" if r.tcp else "UDP",
                     reply["name"], reply["address"])
        r.up = True
        r.ever_joined = True
        r.fast_pings = FAST_PINGS
        # Ping first: it confirms the new session to the relay, and its round trip must not
        # include the interface configuration that joined() may do.
        self._ping(now)
        self.relay_mtu = reply["relay_mtu"]
        self._adopt_mtu(reply["mtu"])
        assignment = Assignment(reply["name"], reply["address"], reply["network"])
        net = ipaddress.IPv4Network(assignment.network)
        self._overlay = (int(net.network_address), int(net.netmask))
        self._endpoint_ok.clear()
        if assignment != self.assignment:
            self.assignment = assignment
            self.io.joined(assignment)

    def _relay_data(self, data: bytes, now: float) -> None:
        r = self.relay
        _, plaintext = self._open(data, r)
        if plaintext is None:
            return
        r.last_rx = now
        try:
            msg = messages.decode_control(plaintext)
        except ProtocolError:
            self.drops["bad_control"] += 1
            return
        kind = msg["t"]
        if kind == "pong":
            if msg["n"] == r.ping_seq:
                r.rtt = self.clock() - r.ping_sent
            r.seen_as = msg["ep"]
        elif kind == "dir":
            if self.mirror.apply(msg):
                self._sync_peers(now)
            if msg["mtu"] and msg["mtu"] != self.network_mtu:
                self._adopt_mtu(msg["mtu"])
        elif kind == "revoked":  # authenticated: only the relay holds this session's keys
            self.stopped = True
            self._drop_all()
            self.io.refused("key_revoked", "this node's key was revoked on the relay; delete the key "
                            "file in the node's state dir and join again with a new token")
        else:
            self.drops["unexpected_control"] += 1

    def _relay_hint(self, data: bytes, now: float) -> None:
        r = self.relay
        try:
            reason, _ = wire.parse_hint(data)
        except ProtocolError:
            self.drops["bad_hint"] += 1
            return
        if now - r.hint_at < HINT_INTERVAL:
            self.drops["hint_rate_limited"] += 1
            return
        r.hint_at = now
        self.counts["hints"] += 1
        if reason == wire.HINT_NOT_MY_KEY:
            r.wrong_key_hints += 1
            if not r.ever_joined and r.wrong_key_hints >= 3:
                self.stopped = True
                self.io.refused("wrong_relay_key", "the relay does not hold the key named in the join "
                                "token; the token belongs to another relay, or --relay points elsewhere")
            return
        # Unauthenticated: at most a new handshake, and never more than once a second.
        if r.initiation is None or now - r.initiation.created >= HINT_INTERVAL:
            self._relay_handshake(now)

    def _drop_all(self) -> None:
        """Forget every key: a revoked node must not go on talking to its peers directly."""
        for peer in self.peers.values():
            self._drop_sessions(peer)
        r = self.relay
        r.session = r.previous = r.initiation = None
        r.up = False
        self.sessions.clear()

    def _control(self, msg: dict) -> None:
        s = self.relay.session
        if s is not None:
            sealed = s.seal(messages.encode(msg))
            if sealed is not None:
                self.io.send(RELAY, sealed)

    def _ping(self, now: float) -> None:
        r = self.relay
        r.ping_seq += 1
        r.ping_sent = self.clock()
        r.ping_at = now
        self._control({"t": "ping", "n": r.ping_seq, "v": self.mirror.version})

    def transport_lost(self, now: float) -> None:
        """The adapter's TCP stream to the relay closed: reconnect now, not after a timeout."""
        r = self.relay
        if r.up:
            log.warning("lost the TCP connection to the relay; reconnecting")
        r.up = False
        r.initiation = None
        r.next_attempt = now

    def bye(self) -> None:
        """Tell the relay we are leaving, so that peers see it at once."""
        if self.relay.up:
            self._control({"t": "bye"})

    # -- time --------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        if self.stopped:
            return
        r = self.relay
        if r.up and now - r.last_rx > RELAY_DEAD_AFTER:
            r.up = False
            log.warning("no answer from the relay for %.0f s; reconnecting", now - r.last_rx)
        if not r.up:
            # next_attempt is set when a handshake goes out, so a refusal that says "retry"
            # waits its backoff too; transport_lost() and hints bring it forward.
            if now >= r.next_attempt:
                if r.initiation is not None:
                    r.failures += 1
                self._relay_handshake(now)
        else:
            s = r.session
            if r.initiation is None and s is not None and s.wants_rekey(now):
                self._relay_handshake(now)
            elif r.initiation is not None and now >= r.next_attempt:
                self._relay_handshake(now)
            if now - r.ping_at >= (1.0 if r.fast_pings else PING_INTERVAL):
                r.fast_pings = max(0, r.fast_pings - 1)
                self._ping(now)
        for peer in self.peers.values():
            self._tick_peer(peer, now)

    def _tick_peer(self, peer: Peer, now: float) -> None:
        if peer.initiation is not None and now >= peer.hs_next:
            if peer.hs_attempts >= HANDSHAKE_ATTEMPTS:
                self.drops["handshake_gave_up"] += 1
                self.drops["queue_dropped"] += len(peer.queue)
                peer.queue.clear()
                self._initiating.pop(peer.initiation.local_index, None)
                peer.initiation = None
                peer.hs_attempts = 0
            else:
                self._initiate(peer, now)
        s = peer.tx
        if s is not None:
            if s.expired(now):
                self.sessions.pop(s.local_index, None)
                peer.tx = None
            elif peer.initiation is None and now - peer.last_tx < KEEPALIVE and (
                    s.wants_rekey(now) or now - peer.last_rx >= UNANSWERED):
                self._initiate(peer, now)
        if peer.previous is not None and peer.previous.expired(now):
            self.sessions.pop(peer.previous.local_index, None)
            peer.previous = None
        if peer.pending is not None and now - peer.pending.created > PENDING_TIMEOUT:
            self.sessions.pop(peer.pending.local_index, None)
            peer.pending = None
        if peer.tx is not None and now - peer.last_rx < 3 * KEEPALIVE:  # in use
            for ep in peer.path.due(now):  # punch, or keep a direct path alive
                self._probe(peer, ep, now)
            if peer.tx_ep is RELAY and now - peer.probe_at >= PROBE_INTERVAL:
                peer.probe_at = now
                self._probe(peer, RELAY, now)
            elif peer.last_rx > peer.last_tx and now - peer.last_tx >= KEEPALIVE:
                self._send_peer(peer, b"", now)
        self._retarget(peer, now)  # a direct path that went quiet goes back to the relay

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict:
        r = self.relay
        a = self.assignment
        return {
            "role": "node",
            "name": a.name if a else self.name,
            "address": a.address if a else None,
            "network": a.network if a else None,
            "mtu": self.mtu,
            "network_mtu": self.network_mtu or None,
            "advertised_routes": list(self.routes),
            "accepted_routes": list(self.accepted),
            "public_key": self.identity.public.hex(),
            "relay": {"endpoint": self.relay_label, "connected": r.up, "transport": "tcp" if r.tcp else "udp",
                      "rtt_ms": None if r.rtt is None or not r.up else round(r.rtt * 1000, 3),
                      "seen_as": r.seen_as or None},
            "peers": [{
                "name": p.name, "address": p.address, "online": p.online,
                "path": "relay" if p.tx_ep is RELAY else "direct",
                "endpoint": self.relay_label if p.tx_ep is RELAY else f"{p.tx_ep[0]}:{p.tx_ep[1]}",
                "mtu": (p.path_mtu if p.tx_ep is RELAY else p.direct_mtu) or None,
                "routes": list(p.routes),
                "session": p.tx is not None,
                "rtt_ms": None if p.rtt is None else round(p.rtt * 1000, 3),
                "rx_bytes": p.rx_bytes, "tx_bytes": p.tx_bytes,
            } for p in sorted(self.peers.values(), key=lambda p: p.name)],
            "counters": dict(self.counts),
            "drops": dict(self.drops),
        }


def _within(address: bytes, prefixes) -> bool:
    n = int.from_bytes(address, "big")
    return any(n & mask == network for network, mask in prefixes)
