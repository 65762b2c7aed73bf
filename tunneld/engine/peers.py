"""Peers, and the end-to-end handshakes between a node and each of them, without I/O.

A Peer is another member of the overlay as this node knows it: who it is (from the
relay's directory), the keys we share (a KeyRing), our handshake with it in flight,
where its packets go (probes.py) and what fits the way (routes.py).

Handshakes are Noise IK (proto/handshake.py), initiated by whichever side has
something to send, through the relay or straight to the peer's endpoint:

  initiate(peer)        packets wait in the peer's queue (QUEUE_LIMIT) while an INIT goes
                        out, again every HANDSHAKE_RETRY (with jitter) up to
                        HANDSHAKE_ATTEMPTS, then the queue is dropped and counted
  on_init(peer, INIT)   a flood guard first (a cookie before any public-key work under load,
                        a share per source: control/ratelimit.py), then authenticate; the
                        key names the peer, its timestamp must be newer than the last, its
                        hello must meet our protocol range; the session waits as pending
  on_resp(peer, RESP)   our session is ready: install it, send what waited
  confirm(peer, s)      the peer's first DATA on a pending session: install it
  tick(peer)            retransmit, rekey (REKEY_AFTER_TIME, or when the peer has gone
                        quiet for UNANSWERED while we send), expire old sessions

The INIT payload is our timestamp, followed by our hello (proto/version.py) for a peer
that announced the "hello" capability, in the directory or in a handshake of its own;
a 0.1.0 peer takes only the timestamp, so after two unanswered attempts the hello is
left off. The RESP payload is our hello, which a 0.1.0 initiator ignores.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import deque

from ..logs import event
from ..control.directory import Entry
from ..control.overlay6 import address6
from ..control.paths import PathState
from ..control.ratelimit import HandshakeGuard
from ..drops import Drop
from ..proto import endpoint, messages, wire
from ..proto.endpoint import RELAY
from ..proto.errors import ProtocolError
from ..proto.handshake import TIMESTAMP_LEN, Identity, Timestamper, read_initiation
from ..proto.noise import KeyPair
from ..proto.session import Session
from ..proto.version import OURS, Hello
from .effects import Env, Transmit
from .initiator import Initiator
from .sessions import IndexTable, KeyRing

log = logging.getLogger("tunneld.node")

HANDSHAKE_RETRY = 1.0  # peer handshake retransmission
HANDSHAKE_ATTEMPTS = 15  # then drop the queued packets; the next packet starts again
HELLO_ATTEMPTS = 2  # INITs with our hello before we try one without (the peer may be 0.1.0)
PENDING_TIMEOUT = 10.0
KEEPALIVE = 10.0  # answer received traffic with an empty packet if we sent nothing
UNANSWERED = 15.0  # sending for this long and hearing nothing: the peer lost its keys, handshake
REHANDSHAKE_INTERVAL = 1.0  # at most this often per peer for traffic we cannot read
QUEUE_LIMIT = 128  # packets held per peer while its handshake runs
# A node's share of the relay's flood defence (engine/relay.py): peers rekey every two minutes,
# so more than this many INITs a second is a flood, and then each source needs a cookie and
# gets at most PEER_SOURCE_RATE handshakes a second.
PEER_UNDER_LOAD_INITS = 50
PEER_SOURCE_RATE = 10.0
PEER_SOURCE_BURST = 20.0


class Peer:
    __slots__ = ("name", "addr", "address", "key", "online", "endpoint", "lan", "underlay_mtu", "routes",
                 "announced", "said", "problem",
                 "keys", "hs", "hs_attempts", "hs_next", "hs_failing", "last_ts", "queue", "unreadable_at",
                 "tx_bytes", "rx_bytes", "tx_packets", "rx_packets", "last_rx", "last_tx",
                 "tx_ep", "tx_prefix", "relayed_prefix", "path", "rtt_relay", "probe_seq", "probe_at", "probes",
                 "path_mtu", "direct_mtu", "mss", "vxlan_mss", "sources", "sources6", "ipv6")

    def __init__(self, entry: Entry, table: IndexTable, identity: Identity, suite: int, env: Env, now: float,
                 ipv6: bool = True):
        """ipv6: our host reaches IPv6 endpoints (its candidates of that family are tried)."""
        self.ipv6 = ipv6
        self.addr = entry.addr
        self.address = str(ipaddress.IPv4Address(entry.addr))
        self.key = entry.key
        self.keys = KeyRing(table, self)  # keys.current is what we send with
        self.hs = Initiator(table, self, identity, entry.key, suite, env)
        self.said: Hello | None = None  # what it announced in a handshake of its own
        self.problem = ""  # why we cannot talk to it, when its protocol range misses ours
        self.hs_attempts = 0
        self.hs_failing = False  # the last handshake gave up: said once, until one completes
        self.hs_next = 0.0
        self.last_ts = b""
        self.queue: deque = deque(maxlen=QUEUE_LIMIT)
        self.unreadable_at = -REHANDSHAKE_INTERVAL  # when we last handshook over data we could not open
        self.tx_bytes = self.rx_bytes = 0
        self.tx_packets = self.rx_packets = 0  # inner packets, as the bytes (metrics)
        self.last_rx = self.last_tx = 0.0
        # Where data goes now: the relay (with the relayed header), or a direct endpoint.
        self.relayed_prefix = wire.relayed_header(entry.addr)
        self.tx_ep = RELAY
        self.tx_prefix = self.relayed_prefix
        self.path = PathState()
        self.rtt_relay: float | None = None
        self.probe_seq = 0
        self.probe_at = 0.0  # engine time of the last probe over the relay, for the interval
        self.probes: dict[int, tuple] = {}  # seq -> (where it went, clock reading when sent)
        self.path_mtu = 0  # the largest inner packet the relayed path carries (routes.py)
        self.direct_mtu = 0  # likewise direct (no relay header; no relay link on the way)
        self.mss = self.vxlan_mss = 0xFFFF  # clamp limits for SYNs towards it, direct and inside VXLAN
        self.sources: tuple = ()  # (network, mask) pairs it may send from besides its address
        self.sources6: tuple = ()  # the same of IPv6 prefixes
        self.update(entry, now)

    def row(self, relay_label: str, network6: str | None = None) -> dict:
        """This peer as `tunneld status` shows it; its IPv6 address where both of us carry IPv6."""
        relayed = self.tx_ep is RELAY
        v6 = network6 and self.hello.has("ipv6")
        return {"name": self.name, "address": self.address, "online": self.online,
                "address6": str(address6(ipaddress.IPv6Network(network6), self.address)) if v6 else None,
                "path": "relay" if relayed else "direct",
                "endpoint": relay_label if relayed else endpoint.format(self.tx_ep),
                "mtu": (self.path_mtu if relayed else self.direct_mtu) or None,
                "routes": list(self.routes), "session": self.keys.current is not None,
                "protocol": str(self.hello), "problem": self.problem or None,
                "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
                "rx_bytes": self.rx_bytes, "tx_bytes": self.tx_bytes,
                "rx_packets": self.rx_packets, "tx_packets": self.tx_packets}

    def update(self, entry: Entry, now: float) -> None:
        self.name, self.online, self.endpoint = entry.name, entry.online, entry.endpoint
        self.underlay_mtu, self.routes, self.lan = entry.mtu, entry.routes, entry.lan
        self.announced = entry.hello
        self.path.set_candidates(self.candidates(), now)

    def candidates(self) -> list[tuple]:
        """Where it may be reached directly: the address the relay sees, then its LAN addresses
        (those a peer may be sent to at all; IPv6 ones only when our host has IPv6)."""
        eps = [endpoint.parse(self.endpoint), *(endpoint.parse(a) for a in self.lan)]
        return [ep for ep in eps if ep is not None and endpoint.reachable(ep) and (self.ipv6 or ":" not in ep[0])]

    @property
    def hello(self) -> Hello:
        return self.said if self.said is not None else self.announced

    @property
    def rtt(self) -> float | None:
        ep = self.tx_ep
        return self.rtt_relay if ep is RELAY else self.path.rtt.get(ep)

    def send(self, out: Transmit, msg: bytes) -> None:
        """A handshake message to the peer, the way its data goes."""
        out.send(self.tx_ep, self.tx_prefix + msg)

    def prefix(self, via) -> bytes:
        """What goes before a message to it by way of via: the relayed header through the relay."""
        return self.relayed_prefix if via is RELAY else b""

    def reply(self, out: Transmit, via, msg: bytes) -> None:
        """A message back the way one came."""
        out.send(via, self.prefix(via) + msg)


class PeerHandshakes:
    def __init__(self, identity: Identity, table: IndexTable, out: Transmit, env: Env, timestamps: Timestamper,
                 drops, counts, peers_by_key: dict, now: float):
        self.identity, self.table, self.out, self.env = identity, table, out, env
        self.timestamps, self.peers_by_key = timestamps, peers_by_key
        self.drops, self.counts = drops, counts  # the node's, shared
        self.guard = HandshakeGuard(identity.public, now, PEER_UNDER_LOAD_INITS, PEER_SOURCE_RATE,
                                    PEER_SOURCE_BURST, sources=4096, random=env.random)

    # -- initiating ---------------------------------------------------------------------

    def queue(self, peer: Peer, packet: bytes, now: float) -> None:
        peer.queue.append(packet)
        if peer.hs.initiation is None:
            self.initiate(peer, now)

    def initiate(self, peer: Peer, now: float) -> None:
        payload = self.timestamps()
        if peer.hello.has("hello") and peer.hs_attempts < HELLO_ATTEMPTS:
            payload += messages.encode_hello(OURS)
        peer.send(self.out, peer.hs.start(payload, now))
        peer.hs_attempts += 1
        peer.hs_next = now + HANDSHAKE_RETRY * (0.8 + 0.4 * self.env.uniform())
        self.counts["peer_handshakes_sent"] += 1

    def on_reply(self, peer: Peer, msg: bytes, now: float) -> None:
        """A RESP or a COOKIE answering our handshake with peer."""
        (self.on_resp if msg[0] == wire.RESP else self.on_cookie)(peer, msg, now)

    def on_resp(self, peer: Peer, msg: bytes, now: float) -> None:
        if peer.hs.initiation is None or msg[8:12] != peer.hs.index:
            self.drops[Drop.UNEXPECTED_RESPONSE] += 1
            return
        try:
            s, payload = peer.hs.complete(msg, now)
            hello = messages.decode_hello(payload)
        except ProtocolError:
            self.drops[Drop.HANDSHAKE_INVALID] += 1
            return
        peer.hs_attempts = 0
        if not self._hello_ok(peer, hello):
            return
        peer.keys.install(s)
        self.counts["peer_handshakes_completed"] += 1
        peer.hs_failing = False
        peer.last_rx = now  # the handshake itself was word from the peer
        if not self.flush(peer, now):
            self.keepalive(peer, now)  # confirms the session to the responder

    def on_cookie(self, peer: Peer, msg: bytes, now: float) -> None:
        again = peer.hs.take_cookie(msg, now, self.drops, self.counts)
        if again is not None:
            peer.send(self.out, again)

    # -- responding ---------------------------------------------------------------------

    def on_init(self, peer: Peer | None, msg: bytes, now: float, via) -> None:
        if not self._init_allowed(peer, msg, now, via):
            return
        self.counts["peer_initiations_processed"] += 1
        try:
            incoming = read_initiation(self.identity, msg)
        except ProtocolError:
            self.drops[Drop.HANDSHAKE_INVALID] += 1
            return
        if peer is None:  # straight from an endpoint: the key says who it is
            peer = self.peers_by_key.get(incoming.remote_public)
            if peer is None:
                self.drops[Drop.HANDSHAKE_UNKNOWN_KEY] += 1
                return
        if incoming.remote_public != peer.key:
            self.drops[Drop.HANDSHAKE_WRONG_PEER] += 1
            return
        ts, rest = incoming.payload[:TIMESTAMP_LEN], incoming.payload[TIMESTAMP_LEN:]
        if len(ts) != TIMESTAMP_LEN or ts <= peer.last_ts:
            self.drops[Drop.HANDSHAKE_REPLAY] += 1
            return
        try:
            hello = messages.decode_hello(rest) if rest else None
        except ProtocolError:
            self.drops[Drop.HANDSHAKE_INVALID] += 1
            return
        if hello is not None and not self._hello_ok(peer, hello):
            return
        peer.last_ts = ts
        resp, s = incoming.accept(self.table.allocate(), messages.encode_hello(OURS), now,
                                  KeyPair.from_private_bytes(self.env.random(32)))
        peer.keys.offer(s)
        peer.reply(self.out, via, resp)
        self.counts["peer_handshakes_answered"] += 1
        peer.hs_failing = False

    def _init_allowed(self, peer: Peer | None, msg: bytes, now: float, via) -> bool:
        """The relay's flood defence, on a node: under load, no Diffie-Hellman for an INIT
        without a cookie, and a share per source (proto/cookie.py)."""
        try:
            wire.parse_init(msg)
        except ProtocolError:
            self.drops[Drop.HANDSHAKE_INVALID] += 1
            return False
        if not wire.mac1_valid(msg, self.identity.mac1_key):
            self.drops[Drop.HANDSHAKE_INVALID] += 1
            return False
        # Through the relay, the relay vouches for the sender's overlay address.
        host, source = (peer.addr, peer.addr) if via is RELAY else endpoint.source(via)
        refused = self.guard.check(msg, host, source, now)
        if refused:
            self.drops[refused] += 1
            if refused is Drop.HANDSHAKE_NEEDS_COOKIE:
                reply = self.guard.cookie_reply(msg, source, now)
                if peer is not None:
                    peer.reply(self.out, via, reply)
                else:
                    self.out.send(via, reply)
            return False
        return True

    def _hello_ok(self, peer: Peer, hello: Hello) -> bool:
        """Remember what the peer announced; refuse it, with a reason, if we cannot talk."""
        peer.said = hello
        problem = hello.problem()
        if problem is None:
            peer.problem = ""
            return True
        self.drops[Drop.PEER_VERSION] += 1
        if problem != peer.problem:
            log.warning("cannot talk to %s: %s", peer.name, problem,
                        extra=event("peer_refused", peer=peer.name, problem=problem))
        peer.problem = problem
        return False

    # -- sessions -----------------------------------------------------------------------

    def confirm(self, peer: Peer, s: Session, now: float) -> None:
        """The peer's first DATA on the session it answered: it holds the keys."""
        peer.keys.confirm(s)
        peer.last_rx = now
        self.flush(peer, now)

    def flush(self, peer: Peer, now: float) -> bool:
        """Send what waited for the session; True if anything did."""
        sent = bool(peer.queue)
        s = peer.keys.current
        while peer.queue:
            packet = peer.queue.popleft()
            sealed = s.seal(packet, peer.tx_prefix)
            if sealed is None:
                break
            peer.tx_bytes += len(packet)
            peer.tx_packets += 1
            self.out.send(peer.tx_ep, sealed)
        if sent:
            peer.last_tx = now
        return sent

    def keepalive(self, peer: Peer, now: float) -> None:
        s = peer.keys.current
        if s is not None:
            sealed = s.seal(b"", peer.tx_prefix)
            if sealed is not None:
                peer.last_tx = now
                self.out.send(peer.tx_ep, sealed)

    def unreadable(self, peer: Peer, now: float) -> None:
        """Data from a peer for a session we do not have: we restarted, or it holds keys we
        dropped. Rather than let it send into the void until its session expires, offer new
        keys (an authenticated handshake; at most once a second per peer)."""
        if peer.hs.initiation is None and now - peer.unreadable_at >= REHANDSHAKE_INTERVAL:
            peer.unreadable_at = now
            self.initiate(peer, now)

    def forget(self, peer: Peer) -> None:
        peer.keys.drop()
        peer.hs.stop()

    # -- time ---------------------------------------------------------------------------

    def tick(self, peer: Peer, now: float) -> None:
        if peer.hs.initiation is not None and now >= peer.hs_next:
            if peer.hs_attempts >= HANDSHAKE_ATTEMPTS:
                self.drops[Drop.HANDSHAKE_GAVE_UP] += 1
                if not peer.hs_failing:
                    peer.hs_failing = True
                    log.warning("no handshake with %s after %d attempts; it starts again with the next packet",
                                peer.name, peer.hs_attempts,
                                extra=event("handshake_failed", peer=peer.name, attempts=peer.hs_attempts))
                self.drops[Drop.QUEUE_DROPPED] += len(peer.queue)
                peer.queue.clear()
                peer.hs.stop()
                peer.hs_attempts = 0
            else:
                self.initiate(peer, now)
        peer.keys.expire(now, PENDING_TIMEOUT)
        s = peer.keys.current
        if (s is not None and peer.hs.initiation is None and now - peer.last_tx < KEEPALIVE
                and (s.wants_rekey(now) or now - peer.last_rx >= UNANSWERED)):
            self.initiate(peer, now)
