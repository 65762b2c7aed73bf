"""A node's workers, without I/O: the data path of one lane, and the table it runs on.

`tunneld join --workers N` runs the node engine (node.py) in its own process, lane 0,
and N - 1 worker processes beside it, lanes 1..N-1 (net/node_worker.py). Each worker
reads its own queue of tunneld0 and its own socket of the node's UDP port, and seals
and opens DATA in a lane of its own (proto/session.py): one handshake per peer, its
keys shared, counters and replay windows per lane. Everything else stays with the node
engine: handshakes, the relay link, probes, paths, MTUs, routes, the lock, status.

  export(node, relay_udp)   what a worker needs of the engine's state, as plain data
  Lane.apply(table)         a worker takes it in, keeping every session it already has
                            (its counters and windows): a session it once dropped never
                            comes back, so no nonce is ever used twice
  Lane.from_tun_train(packets)  route (once for a super-packet's segments), clamp, seal
                            in our lane, send; a packet the lane cannot send (no confirmed
                            session yet, a peer that does not read lanes, the relay over
                            TCP) goes to the engine instead. from_tun(packet): one
  Lane.receive(data, ep)    DATA in our lanes: open, check the inner source, write to
                            tunneld0; what only the engine can act on (a probe, a
                            session's first DATA, data from a new path, data for a
                            session we lack) is handed to it, opened, with the index.
                            The steering program looks at a GRO train's first datagram
                            only, and a train from one endpoint mixes lanes: whatever is
                            not in our lanes goes, unopened, to the process whose it is
                            (lane_of), so that each lane's window is in one process only.
                            DATA for a session (or a peer) the lane does not hold yet waits
                            in a small limbo for the next table, which may bring it: the
                            engine's table and its peer's first DATA on a new session race
                            each other to a worker (a lost rekey's pings, otherwise)
  Lane.report(now)          counters since the last report, which the engine adds to its own;
                            what waited in limbo for longer than a table takes is dropped

Out (a Lane's `out`): send(ep, data), write_tun(packet), to_engine(packet) for a packet
the engine sends, event(index, plaintext, via) for Node.from_worker, unreadable(addr),
elsewhere(data, ep) for a datagram of another lane (or none: the engine's).
"""

from __future__ import annotations

import ipaddress
from collections import Counter

from ..drops import Drop
from ..proto import wire
from ..proto.endpoint import RELAY
from ..proto.session import Session
from . import inner
from .offload import unpartial
from .routes import OutsideOverlay, prefix_text

RETIRED = 65536  # sessions a lane remembers having dropped (never to be taken again)
HEARD_EVERY = 1.0  # seconds between telling the engine of data from a path it does not send on
# ... and of relayed data: with several relays the engine takes its home for dead after a
# second without a word from it, and under a flood the relay's pongs may be what it drops
RELAY_HEARD_EVERY = 0.25
LIMBO = 64  # datagrams held for a table that may bring their session; more are dropped at once
LIMBO_WAIT = 0.5  # seconds: far longer than a table takes to reach a worker


def lane_of(data: bytes) -> int:
    """The lane a datagram belongs to, as the steering program reads it (net/steer.py):
    DATA's counter's top byte, direct or relayed; 0 (the engine's) for anything else."""
    if len(data) > 16:
        t = data[0]
        if t == wire.DATA:
            return data[8]
        if t == wire.RELAYED and data[8] == wire.DATA:
            return data[16]
    return 0


def export(node, relay_udp: bool, udp6: bool = False) -> dict:
    """The workers' table: peers (where and how their data goes), the sessions of peers that
    read lanes, the accepted routes, the overlay, and whether the relay is ours to send to
    (not over TCP, nor over IPv6 unless udp6: the workers have IPv6 sockets)."""
    peers, sessions = [], []
    for p in node.peers.values():
        lanes = p.hello.has("lanes")
        cur = p.keys.current
        # workers without an IPv6 socket leave an IPv6 endpoint to the engine
        v6 = not udp6 and p.tx_ep is not RELAY and ":" in p.tx_ep[0]
        send = cur.local_index if lanes and cur is not None and cur.confirmed and not v6 else None
        peers.append([p.addr, None if p.tx_ep is RELAY else list(p.tx_ep), p.tx_prefix, p.mss, p.vxlan_mss,
                      [list(x) for x in p.sources], send])
        if lanes:
            for s in (cur, p.keys.previous, p.keys.pending):
                if s is not None:
                    sessions.append([s.local_index, p.addr, s.suite, *s.keys, s.remote_index, s.confirmed,
                                     s.initiator, s.created])
    return {"relay_udp": relay_udp, "overlay": list(node.outside.overlay) if node.outside.overlay else None,
            "overlay6": node.assignment.network6 if node.outside.overlay6 else None,  # text: 128-bit ints
            "peers": peers, "sessions": sessions, "prefix6": node.prefix6,
            "routes": [[net, mask, peer.addr] for net, mask, peer in node.routes.table],
            # IPv6 prefixes as text (128-bit integers do not fit msgpack), each peer's with it
            "routes6": [[prefix_text(net, mask, 6), peer.addr] for net, mask, peer in node.routes.table6]}


class LanePeer:
    __slots__ = ("addr", "ep", "prefix", "mss", "vxlan_mss", "sources", "sources6", "session",
                 "rx_bytes", "tx_bytes", "rx_packets", "tx_packets", "last_rx", "last_tx", "heard_at", "unread_at")

    def __init__(self, addr: bytes):
        self.addr = addr
        self.session: Session | None = None  # what we seal with, in our lane
        self.sources6: tuple = ()
        self.rx_bytes = self.tx_bytes = self.rx_packets = self.tx_packets = 0
        self.last_rx = self.last_tx = 0.0
        self.heard_at = self.unread_at = -HEARD_EVERY


class Lane:
    def __init__(self, lane: int, out):
        self.lane = lane
        self.out = out
        self.peers: dict[bytes, LanePeer] = {}
        self.sessions: dict[bytes, tuple[Session, LanePeer]] = {}
        self.routes: list = []
        self.routes6: list = []  # the same of IPv6 prefixes (routes.py)
        self.prefix6: bytes | None = None  # the IPv6 overlay prefix's first 12 bytes (inner.py)
        self.relay_udp = False
        self.count = 1  # lanes in all, the engine's included: lane L is ours if L % count == lane
        self.outside = OutsideOverlay()
        self.retired: dict[bytes, None] = {}  # insertion-ordered: the oldest go first
        self.drops: Counter = Counter()
        self.handed = 0  # packets from tunneld0 the engine sent for us
        self.relay_heard_at = -RELAY_HEARD_EVERY
        self.limbo: list = []  # (data, ep, time): DATA for sessions the next table may bring
        self.version = 0  # moves with every table taken in (net/express.py follows it)
        self._retrying = False

    def apply(self, table: dict) -> None:
        self.relay_udp = table["relay_udp"]
        self.count = table.get("lanes", 1)
        self.prefix6 = table.get("prefix6")
        if table["overlay"]:
            self.outside.overlay = tuple(table["overlay"])
            six = ipaddress.IPv6Network(table["overlay6"]) if table.get("overlay6") else None
            self.outside.overlay6 = (int(six.network_address), int(six.netmask)) if six else None
            self.outside.known.clear()
        peers = {}
        for addr, ep, prefix, mss, vxlan_mss, sources, _ in table["peers"]:
            p = self.peers.get(addr) or LanePeer(addr)
            p.ep = RELAY if ep is None else tuple(ep)
            p.prefix, p.mss, p.vxlan_mss = prefix, mss, vxlan_mss
            p.sources = tuple(tuple(x) for x in sources)
            p.session = None
            peers[addr] = p
        sessions = {}
        for index, addr, suite, send_key, recv_key, remote, confirmed, initiator, created in table["sessions"]:
            peer = peers.get(addr)
            if peer is None or index in self.retired:
                continue
            had = self.sessions.get(index)
            if had is not None:
                s = had[0]
            else:
                s = Session(index, remote, suite, send_key, recv_key, initiator, created, lane=self.lane)
            s.confirmed = s.confirmed or confirmed
            sessions[index] = (s, peer)
        for index in self.sessions.keys() - sessions.keys():
            self.retired[index] = None
            if len(self.retired) > RETIRED:
                del self.retired[next(iter(self.retired))]
        for addr, *_, send in table["peers"]:
            if send is not None and send in sessions:
                peers[addr].session = sessions[send][0]
        self.peers, self.sessions = peers, sessions
        self.version += 1
        self.routes = [(net, mask, peers[addr]) for net, mask, addr in table["routes"] if addr in peers]
        for p in peers.values():
            p.sources6 = ()
        routes6 = []
        for text, addr in table.get("routes6", ()):
            if addr in peers:
                net = ipaddress.IPv6Network(text)
                routes6.append((int(net.network_address), int(net.netmask), peers[addr]))
                peers[addr].sources6 += ((int(net.network_address), int(net.netmask)),)
        self.routes6 = routes6
        if self.limbo:
            self._retry()

    def _retry(self, until: float | None = None) -> None:
        """What waited for a table (all of it, or what came before `until`), once more:
        opened now, or dropped and counted."""
        held, self.limbo = self.limbo, []
        if until is not None:
            self.limbo = [x for x in held if x[2] >= until]
            held = [x for x in held if x[2] < until]
        self._retrying = True
        try:
            for data, ep, t in held:
                self.receive(data, ep, t)
        finally:
            self._retrying = False

    def _lacks(self, data: bytes, ep, now: float, reason: str, peer) -> None:
        """DATA for a session (or from a peer) this lane does not hold: it may be on its way
        from the engine, so it waits for the next table (bounded); else it is dropped."""
        if not self._retrying and len(self.limbo) < LIMBO:
            self.limbo.append((data, ep, now))
            return
        self.drops[reason] += 1
        if peer is not None and now - peer.unread_at >= HEARD_EVERY:  # the engine re-handshakes, at most this often
            peer.unread_at = now
            self.out.unreadable(peer.addr)

    # -- tunneld0 -> wire ---------------------------------------------------------------

    def from_tun(self, packet: bytes, now: float) -> None:
        self.from_tun_train((packet,), now)

    def from_tun_train(self, packets, now: float) -> None:
        """The packets of one read from tunneld0: a lone one, or one super-packet's segments,
        which share their headers' addresses: routed once, each clamped and sealed."""
        body, meta = unpartial(packets[0])
        peer, v6 = inner.route(body, self.prefix6, self.peers, self.routes, self.routes6)
        if peer is None:
            self.drops[Drop.TUN_NOT_IPV4 if v6 is None else Drop.TUN_NO_PEER] += len(packets)
            return
        s = peer.session
        ep = peer.ep
        if s is None or (ep is RELAY and not self.relay_udp):
            self.handed += len(packets)
            for packet in packets:
                self.out.to_engine(packet)
            return
        seal, send, prefix, mss, vxlan_mss = s.seal, self.out.send, peer.prefix, peer.mss, peer.vxlan_mss
        sent = count = 0
        for i, packet in enumerate(packets):
            if i:  # the first is unpartial'd above
                body, meta = unpartial(packet)
            body = inner.clamped(body, v6, mss, vxlan_mss)
            sealed = seal(body, prefix, meta)
            if sealed is None:  # our lane's counters ran out: the engine's rekey is near
                self.handed += 1
                self.out.to_engine(packet)
                continue
            sent += len(body)
            count += 1
            send(ep, sealed)
        if sent:
            peer.tx_bytes += sent
            peer.tx_packets += count
            peer.last_tx = now

    # -- wire -> tunneld0 ---------------------------------------------------------------

    def receive(self, data: bytes, ep, now: float) -> None:
        if lane_of(data) % self.count != self.lane:
            self.out.elsewhere(data, ep)
            return
        if ep is RELAY:
            if len(data) <= wire.RELAYED_HEADER_LEN or data[0] != wire.RELAYED or data[8] != wire.DATA:
                self.drops[Drop.BAD_TYPE] += 1
                return
            peer = self.peers.get(data[4:8])
            if peer is None:
                self._lacks(data, ep, now, Drop.RELAYED_UNKNOWN_PEER, None)
                return
            msg = data[8:]
            entry = self.sessions.get(msg[4:8])
            if entry is None or entry[1] is not peer:
                self._lacks(data, ep, now, Drop.UNKNOWN_SESSION, peer)
                return
        else:
            if not self.outside.allows(ep):
                self.drops[Drop.DIRECT_BAD_SOURCE] += 1
                return
            if not data or data[0] != wire.DATA:
                self.drops[Drop.DIRECT_BAD_TYPE] += 1
                return
            msg = data
            entry = self.sessions.get(msg[4:8])
            if entry is None:
                self._lacks(data, ep, now, Drop.DIRECT_UNKNOWN_SESSION, None)
                return
        s, peer = entry
        plaintext = s.open(msg)
        if plaintext is None:
            self.drops[s.last_drop] += 1
            return
        self.opened(s, peer, plaintext, msg, ep, now)

    def opened(self, s: Session, peer: LanePeer, plaintext: bytes, msg: bytes, ep, now: float) -> None:
        """What a DATA message of ours says, once opened (here, or by the express path)."""
        peer.last_rx = now
        if not s.confirmed:  # the peer's first DATA on the session it answered: the engine's to confirm
            s.confirmed = True
            self.out.event(s.local_index, b"", ep)
        elif ep is not RELAY:
            if ep != peer.ep and now - peer.heard_at >= HEARD_EVERY:
                peer.heard_at = now  # a way to it the engine may not know: it probes
                self.out.event(s.local_index, b"", ep)
        elif now - self.relay_heard_at >= RELAY_HEARD_EVERY:
            self.relay_heard_at = now  # the relay is there (node.py from_worker)
            self.out.event(s.local_index, b"", RELAY)
        if not plaintext:
            return  # keepalive: the report carries last_rx
        version = plaintext[0] >> 4
        if version == 4 or version == 6:
            if inner.from_peer(plaintext, peer.addr, peer.sources, self.prefix6, peer.sources6):
                peer.rx_bytes += len(plaintext)
                peer.rx_packets += 1
                if msg[1]:  # a deeper checksum, left for our kernel (wire.py)
                    plaintext = bytes((wire.PARTIAL, 0, msg[1], 0, msg[2])) + plaintext
                self.out.write_tun(plaintext)
            else:
                self.drops[Drop.SPOOFED_SOURCE] += 1
        elif plaintext[0] in (wire.PROBE_REQUEST, wire.PROBE_REPLY) and len(plaintext) == wire.PROBE_LEN:
            self.out.event(s.local_index, plaintext, ep)
        else:
            self.drops[Drop.BAD_INNER_PACKET] += 1

    def report(self, now: float) -> dict:
        """Since the last report: per peer [rx bytes, tx bytes, last rx, last tx, rx packets, tx
        packets], drops, hand-offs.
        What has waited in limbo for longer than a table takes was for a session we will not
        get: it is dropped (a peer's data for keys we lack makes the engine re-handshake)."""
        if self.limbo:
            self._retry(now - LIMBO_WAIT)
        peers = {}
        for p in self.peers.values():
            if p.rx_bytes or p.tx_bytes:
                peers[p.addr] = [p.rx_bytes, p.tx_bytes, p.last_rx, p.last_tx, p.rx_packets, p.tx_packets]
                p.rx_bytes = p.tx_bytes = p.rx_packets = p.tx_packets = 0
        out = {"peers": peers, "drops": {str(k): v for k, v in self.drops.items()}, "handed": self.handed}
        self.drops.clear()
        self.handed = 0
        return out
