"""The express path's tables: what an engine knows of its peers, as _express.c reads it.

A lone packet (a ping, a small datagram, an ACK) costs the interpreter's fixed price per
read, and after a pause mostly in cache misses. _express.c carries the common case from
the read to the write in C; dataplane.py calls it first on every readiness callback and
runs its Python path only on what the C code hands back. What it may carry is exactly what
the engine would do without a decision: a peer's current session on its path (direct, or
the relay over UDP), a confirmed session's DATA from the endpoint we send to (or relayed,
with the peer's address), an inner packet from the peer's own address or an accepted
prefix, a destination in a prefix a peer advertises. Handshakes, the relay link, new
paths, MSS clamping, probes and every drop but a failed open or a stale read stay with the
engine.

  Express       the C object, or None where it was not built (or TUNNELD_NATIVE=0)
  NodeSource    the node engine's tables (the node's own process, lane 0)
  LaneSource    a worker's Lane's tables (engine/lanes.py)

A source's tables are rebuilt whenever the engine's table version moves (sessions, paths,
peers): the C code checks before each callback, and again after the engine's code ran in
one (a probe's reply may switch the path).
"""

from __future__ import annotations

import os
import socket

from ..proto.endpoint import RELAY

try:
    from ._express import Express
except ImportError:  # no compiler where it was installed: the Python path carries everything
    Express = None
if os.environ.get("TUNNELD_NATIVE", "1") == "0":  # as for the C AEAD (proto/aead.py): all Python
    Express = None


def ep6(ep) -> bytes | None:
    """An IPv4 endpoint as the C code compares it: 4 address bytes and the port, big-endian."""
    try:
        return socket.inet_aton(ep[0]) + ep[1].to_bytes(2, "big")
    except (OSError, TypeError, ValueError, AttributeError, OverflowError, IndexError):
        return None


def packed(prefixes) -> bytes:
    """A peer's accepted prefixes, (network, mask) pairs, as the C code reads them."""
    return b"".join(net.to_bytes(4, "big") + mask.to_bytes(4, "big") for net, mask in prefixes)


def routes(table) -> bytes:
    """Accepted prefixes, longest first (routes.py), as (network, mask, peer address)."""
    return b"".join(net.to_bytes(4, "big") + mask.to_bytes(4, "big") + peer.addr for net, mask, peer in table)


class NodeSource:
    """The node engine's peers and sessions. lanes(): how many lanes the node runs; relay():
    where the relay is over UDP (None over TCP); after(): the daemon's work after the
    engine's (its effects); error(): an exception, counted."""

    def __init__(self, node, lanes, relay, after, error):
        self.node = node
        self.versioned = node.table  # its version moves with sessions, paths and peers
        self.lanes = lanes
        self.relay = relay
        self.after = after
        self.error = error

    def tables(self) -> tuple:
        node = self.node
        relay = self.relay()
        relay_ep = ep6(relay) if relay else None
        send, recv = {}, {}
        for p in node.peers.values():
            s = p.keys.current
            ep = relay_ep if p.tx_ep is RELAY else ep6(p.tx_ep)
            if s is not None and ep is not None:
                send[p.addr] = (s.seal, p.tx_prefix, ep, p)
        for index, s in node.table.sessions.items():
            p = s.owner
            if p is None or p is node.relay or not s.confirmed:
                continue
            ep = relay_ep if p.tx_ep is RELAY else ep6(p.tx_ep)
            if ep is not None:
                recv[index] = (s, s.open, p, p.addr, ep, packed(p.sources))
        return send, recv, node.outside.overlay, 0, self.lanes(), routes(node.routes.table), node.prefix6

    def opened(self, s, peer, plaintext: bytes, msg: bytes, ep, now: float) -> None:
        try:
            self.node._opened(peer, s, plaintext, msg, now, RELAY if ep is None else ep)
        except Exception:
            self.error()
        if self.node.effects:
            self.after()

    def relay_heard(self, s, now: float) -> None:
        self.node.relay.last_rx = now  # as for relayed data in Node.receive

    def from_tun_train(self, packets: list, now: float) -> None:
        """A super-packet's segments the session's lane has no counters left for."""
        self.node.from_tun_train(packets, now)


class LaneSource:
    """A worker's Lane: its peers, and the sessions it holds; relay(): where the relay is."""

    def __init__(self, lane, relay, error):
        self.lane = lane
        self.versioned = lane  # apply() moves its version
        self.relay = relay
        self.error = error

    def tables(self) -> tuple:
        lane = self.lane
        relay = self.relay() if lane.relay_udp else None
        relay_ep = ep6(relay) if relay else None
        send, recv = {}, {}
        for p in lane.peers.values():
            ep = relay_ep if p.ep is RELAY else ep6(p.ep)
            if p.session is not None and ep is not None:
                send[p.addr] = (p.session.seal, p.prefix, ep, p)
        for index, (s, p) in lane.sessions.items():
            ep = relay_ep if p.ep is RELAY else ep6(p.ep)
            if s.confirmed and ep is not None:
                recv[index] = (s, s.open, p, p.addr, ep, packed(p.sources))
        return send, recv, lane.outside.overlay, lane.lane, lane.count, routes(lane.routes), lane.prefix6

    def opened(self, s, peer, plaintext: bytes, msg: bytes, ep, now: float) -> None:
        try:
            self.lane.opened(s, peer, plaintext, msg, RELAY if ep is None else ep, now)
        except Exception:
            self.error()

    def from_tun_train(self, packets: list, now: float) -> None:
        self.lane.from_tun_train(packets, now)

    def relay_heard(self, s, now: float) -> None:
        lane = self.lane
        lane.relay_heard_at = now
        lane.out.event(s.local_index, b"", RELAY)  # the engine hears its relay is there
