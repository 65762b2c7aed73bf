"""Which way each peer's packets go, found and kept by probes, without I/O.

A probe is an ordinary DATA of the peer's session whose plaintext is 0x01 and a
sequence number; the peer answers 0x02 and the same number the way it came. So a
probe proves a round trip on one path with the session's own keys: nothing goes out
in clear, and nothing is renegotiated when the path changes.

  tick(peer)            while the peer is in use: probe the candidates control/paths.py
                        names (hole punching, then keeping a direct path alive), probe
                        the relay path every PROBE_INTERVAL for its round trip, and send
                        a keepalive where we only received
  answer(peer, ...)     a probe request: reply the way it came
  replied(peer, ...)    a probe reply: a round trip on that path, if it came back from
                        where the probe went
  retarget(peer)        send direct while a direct path answers, through the relay otherwise
"""

from __future__ import annotations

import logging

from ..logs import event
from ..drops import Drop
from ..proto import endpoint, wire
from ..proto.endpoint import RELAY
from ..proto.session import Session
from .effects import Env, Transmit
from .peers import KEEPALIVE, Peer, PeerHandshakes

log = logging.getLogger("tunneld.node")

PROBE_INTERVAL = 5.0  # round-trip probes over the relay while a peer is in use
PROBES_KEPT = 32  # probes awaiting a reply, per peer
IN_USE = 3 * KEEPALIVE  # a peer we heard from this recently is in use: its paths are kept


class Probes:
    def __init__(self, out: Transmit, env: Env, handshakes: PeerHandshakes, counts, drops):
        self.out = out
        self.env = env
        self.handshakes = handshakes
        self.counts = counts
        self.drops = drops

    def probe(self, peer: Peer, via, now: float) -> None:
        if len(peer.probes) >= PROBES_KEPT:
            peer.probes.clear()
        peer.probe_seq += 1
        peer.probes[peer.probe_seq] = (via, self.env.monotonic())
        sealed = peer.keys.current.seal(bytes((wire.PROBE_REQUEST,)) + peer.probe_seq.to_bytes(8, "big"),
                                        peer.prefix(via))
        if sealed is not None:
            self.out.send(via, sealed)

    def answer(self, peer: Peer, s: Session, plaintext: bytes, via) -> None:
        # Answer the way it came: that is the path being tested.
        sealed = s.seal(bytes((wire.PROBE_REPLY,)) + plaintext[1:], peer.prefix(via))
        if sealed is not None:
            self.out.send(via, sealed)

    def replied(self, peer: Peer, plaintext: bytes, via, now: float) -> None:
        seq = int.from_bytes(plaintext[1:], "big")
        sent = peer.probes.get(seq)
        if sent is None:
            return
        where, at = sent
        if via != where:
            # A reply proves a path only from where the probe went: the peer itself could
            # answer from elsewhere, and make us send its traffic to any address it names.
            self.drops[Drop.PROBE_WRONG_PATH] += 1
            return
        del peer.probes[seq]
        rtt = self.env.monotonic() - at
        if where is RELAY:
            peer.rtt_relay = rtt
        elif peer.path.replied(where, rtt, now):
            self.retarget(peer, now)

    def retarget(self, peer: Peer, now: float) -> None:
        direct = peer.path.direct(now)
        ep = RELAY if direct is None else direct
        if ep != peer.tx_ep:
            via = None if direct is None else endpoint.format(direct)
            log.info("path to %s: %s", peer.name, "relay" if via is None else f"direct via {via}",
                     extra=event("path", peer=peer.name, path="relay" if via is None else "direct", endpoint=via))
            self.counts["path_changes"] += 1
            peer.tx_ep = ep
            peer.tx_prefix = peer.relayed_prefix if direct is None else b""
            peer.keys.table.version += 1  # the workers send the new way too

    def tick(self, peer: Peer, now: float) -> None:
        if peer.keys.current is not None and now - peer.last_rx < IN_USE:
            for ep in peer.path.due(now):  # punch, or keep a direct path alive
                self.probe(peer, ep, now)
            if peer.tx_ep is RELAY and now - peer.probe_at >= PROBE_INTERVAL:
                peer.probe_at = now
                self.probe(peer, RELAY, now)
            elif peer.last_rx > peer.last_tx and now - peer.last_tx >= KEEPALIVE:
                self.handshakes.keepalive(peer, now)
        self.retarget(peer, now)  # a direct path that went quiet goes back to the relay
