"""A node, without I/O: the demux between the TUN device, the relay and the peers.

In:   from_tun_train(packets, now)  one read of tunneld0: a packet, or a super-packet's
                              segments (routed once); from_tun(packet, now): one
      receive(data, ep, now)  a datagram (or TCP frame) from the relay (ep RELAY), or
                              straight from a peer's endpoint; tick(now): time passes
      advertise(routes, now), accept(flag)   what we route for others, and take from them
Out:  Transmit.send(ep, data), write_tun(packet)   at once, never blocking
      effects                 changes to the host, in order (effects.py), which the
                              daemon carries out off the receive path

The send pipeline, per packet (per read, the route):
  1. route    the destination names the peer (a dict lookup; IPv6: the IPv4 address in
              its last 32 bits, inner.py), or falls in a prefix a peer advertises
  2. clamp    a TCP SYN's MSS is cut to what the path carries (mss.py)
  3. session  the peer's current session; else the packet waits, and a handshake
              starts (peers.py)
  4. seal     next counter, AEAD (proto/session.py)
  5. send     to the peer's endpoint while a direct path answers probes (probes.py),
              else to the relay behind a RELAYED header

The receive pipeline, receive(), per message:
  from the relay   RELAYED: to the peer its address names; anything else is the relay
                   link's (relaylink.py: join, pongs, directory, revocation) or
                   publishing's (publish_node.py: pub, open, udp)
  direct           only from an endpoint outside the overlay; DATA found by its session
                   index, INIT by the key inside it, RESP and COOKIE by our index
  from a peer      DATA is opened: an IPv4 or IPv6 packet from the peer's address (or
                   from a prefix we accept from it) goes to the TUN device, a probe is
                   answered; INIT, RESP and COOKIE advance handshakes (peers.py)
Every drop is counted by reason (drops.py); nothing here raises on bad input.
A peer is recognised by its session index or its key, never by its address; any
authenticated packet teaches us where it can be reached. Peer sessions do not depend
on the relay: while it is away they keep their keys, and direct pairs keep talking.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, replace

from ..control.backoff import Backoff
from ..control import overlay6
from ..control.directory import DirectoryMirror
from ..control.registry import REVOKED_MESSAGE
from ..drops import Drop
from ..proto import endpoint, wire
from ..proto.endpoint import RELAY
from ..proto.handshake import Identity, Timestamper
from . import inner
from .effects import Assignment, Env, SaveState, SetAddress, SetGateway, Stop, Transmit
from .offload import unpartial
from .peers import Peer, PeerHandshakes
from .probes import Probes
from .publish_node import NodePublishing
from .relaylink import CONTROL, DIRECTORY, JOINED, REFUSED, REVOKED, JoinRequest, RelayLink
from .routes import Mtu, OutsideOverlay, Routes, overlay_conflict
from .trust import Trust
from .sessions import IndexTable

EXIT_MISCONFIGURED = 2
EXIT_REFUSED = 3


@dataclass(frozen=True)
class NodeConfig:
    name: str
    credential: bytes | None  # the join token's id and secret; the first join needs it
    suite: int = wire.SUITE_AESGCM
    underlay_mtu: int = 1500  # our path's towards the relay
    mtu: int | None = None  # tunneld0's as last known (node.json): pods may already use it
    assignment: Assignment | None = None  # as last known (node.json)
    routes: tuple[str, ...] = ()  # prefixes we route for others (a gateway)
    accept_routes: bool = False
    protected: tuple[str, ...] = ()  # what no accepted route may touch: the relay, the host's networks, its gateway
    lan: tuple[str, ...] = ()  # our LAN endpoints, offered to peers as direct candidates
    relay_label: str = ""  # how status names the relay
    chain: bytes | None = None  # our network-lock chain, from an endorsed token
    lock: bytes | None = None  # the lock public key we pinned: peers' keys need its endorsement
    known_keys: tuple = ()  # ((name, key), ...): each peer's key as we last accepted it (node.json)
    host_claims: tuple = ()  # ((what, prefix), ...): the host's addresses, routes and resolvers
    relays: tuple[str, ...] = ()  # "host:port" of every relay given (--relay A,B,C), the first our home
    ipv6: bool = True  # our host reaches IPv6 endpoints: peers' IPv6 candidates are tried


class Node:
    def __init__(self, identity: Identity, relay_public: bytes, config: NodeConfig, out: Transmit, env: Env,
                 now: float, backoff: Backoff | None = None):
        self.identity = identity
        self.config = config
        self.out = out
        self.env = env
        self.assignment = config.assignment
        self.prefix6: bytes | None = None  # the IPv6 overlay prefix's first 12 bytes (inner.py)
        self.effects: list = []
        self.drops: Counter = Counter()
        self.counts: Counter = Counter()
        self.stopped = False
        self.table = IndexTable(env.random)
        self.peers: dict[bytes, Peer] = {}  # by overlay address
        self.peers_by_key: dict[bytes, Peer] = {}
        self.mirror = DirectoryMirror()
        timestamps = Timestamper(env.wall_ns)
        join = JoinRequest(config.name, config.credential, config.underlay_mtu, config.routes, config.lan, config.chain)
        self.relay = RelayLink(identity, relay_public, join, out, env, now, table=self.table, drops=self.drops,
                               counts=self.counts, timestamps=timestamps, backoff=backoff, suite=config.suite,
                               joined_before=config.assignment is not None, relays=config.relays)
        self.handshakes = PeerHandshakes(identity, self.table, out, env, timestamps, self.drops, self.counts,
                                         self.peers_by_key, now)
        self.probes = Probes(out, env, self.handshakes, self.counts, self.drops)
        self.routes = Routes(config.routes, config.accept_routes, config.protected, self.effects, self.drops)
        self.mtu = Mtu(config.underlay_mtu, config.mtu, self.effects)
        self.trust = Trust(config.lock, config.known_keys, self.drops, env.wall)
        self.outside = OutsideOverlay()  # where direct endpoints may be
        self.publishing = NodePublishing(self.effects, self.drops, lambda: self.relay.relays)  # relays' pubs
        if self.assignment is not None:  # from node.json: tunneld0 comes up before the relay answers
            self._assigned(self.assignment)

    # -- the hot path: TUN -> wire -------------------------------------------------------

    def from_tun(self, packet: bytes, now: float) -> None:
        self.from_tun_train((packet,), now)

    def from_tun_train(self, packets, now: float) -> None:
        packet, meta = unpartial(packets[0])  # a checksum left to the receiver's kernel, and its place
        peer, v6 = inner.route(packet, self.prefix6, self.peers, self.routes.table, self.routes.table6)
        if peer is None:
            self.drops[Drop.TUN_NOT_IPV4 if v6 is None else Drop.TUN_NO_PEER] += len(packets)
            return
        s, mss, vxlan_mss = peer.keys.current, peer.mss, peer.vxlan_mss
        sent = count = 0
        for i, raw in enumerate(packets):
            if i:  # the first is unpartial'd above
                packet, meta = unpartial(raw)
            packet = inner.clamped(packet, v6, mss, vxlan_mss)
            if s is None:
                self.handshakes.queue(peer, packet, now)
                continue
            sealed = s.seal(packet, peer.tx_prefix, meta)
            if sealed is None:
                self.drops[Drop.SESSION_EXHAUSTED] += 1
                continue
            sent, count = sent + len(packet), count + 1
            self.out.send(peer.tx_ep, sealed)
        if sent:
            peer.tx_bytes, peer.tx_packets, peer.last_tx = peer.tx_bytes + sent, peer.tx_packets + count, now

    # -- the hot path: wire -> TUN -------------------------------------------------------

    def receive(self, data: bytes, ep, now: float) -> None:
        if ep is not RELAY:
            self._direct(data, ep, now)
            return
        if data and data[0] == wire.RELAYED:
            peer = self.peers.get(data[4:8])
            if peer is None or len(data) <= wire.RELAYED_HEADER_LEN:
                self.drops[Drop.RELAYED_UNKNOWN_PEER] += 1
                return
            self.relay.last_rx = now  # the relay is there: under load its pongs may queue behind this
            self._from_peer(peer, data[8:], now, RELAY)
            return
        event = self.relay.receive(data, now)
        if event is not None:
            self._relay_event(event, now)

    def _direct(self, data: bytes, ep: tuple, now: float) -> None:
        """A message straight from a peer's endpoint (not through the relay)."""
        if not self.outside.allows(ep):  # one inside the overlay would tunnel the tunnel
            self.drops[Drop.DIRECT_BAD_SOURCE] += 1
            return
        t = data[0] if data else 0
        if t == wire.DATA:
            s = self.table.sessions.get(data[4:8])
            peer = s.owner if s is not None else None
            if peer is None or peer is self.relay:
                self.drops[Drop.DIRECT_UNKNOWN_SESSION] += 1
                return
            self._data(peer, s, data, now, ep)
        elif t == wire.INIT:
            self.handshakes.on_init(None, data, now, ep)
        elif t == wire.RESP or t == wire.COOKIE:
            index = data[8:12] if t == wire.RESP else data[4:8]
            peer = self.table.handshakes.get(index)
            if peer is None or peer is self.relay:
                self.drops[Drop.UNEXPECTED_RESPONSE if t == wire.RESP else Drop.UNEXPECTED_COOKIE] += 1
            else:
                self.handshakes.on_reply(peer, data, now)
        else:
            self.drops[Drop.DIRECT_BAD_TYPE] += 1

    def _from_peer(self, peer: Peer, msg: bytes, now: float, via) -> None:
        t = msg[0]
        if t == wire.DATA:
            self._data(peer, self.table.sessions.get(msg[4:8]), msg, now, via)
        elif t == wire.INIT:
            self.handshakes.on_init(peer, msg, now, via)
        elif t == wire.RESP or t == wire.COOKIE:
            self.handshakes.on_reply(peer, msg, now)
        else:
            self.drops[Drop.BAD_TYPE] += 1

    def _data(self, peer: Peer, s, msg: bytes, now: float, via) -> None:
        """A DATA message from peer in session s (looked up once, by whoever had the index)."""
        if s is None or s.owner is not peer:
            self.drops[Drop.UNKNOWN_SESSION] += 1
            self.handshakes.unreadable(peer, now)
            return
        plaintext = s.open(msg)
        if plaintext is None:
            self.drops[s.last_drop] += 1
            return
        self._opened(peer, s, plaintext, msg, now, via)

    def from_worker(self, index: bytes, plaintext: bytes, via, now: float) -> None:
        """What one of our workers opened and leaves to us (engine/lanes.py): a probe, a
        keepalive, a session's first DATA, data from a new path (empty: it wrote that itself)."""
        s = self.table.sessions.get(index)
        if s is not None and s.owner is not self.relay:
            if via is RELAY:
                self.relay.last_rx = now  # as for relayed data of our own (receive)
            self._opened(s.owner, s, plaintext, b"", now, via)

    def _opened(self, peer: Peer, s, plaintext: bytes, msg: bytes, now: float, via) -> None:
        peer.last_rx = now
        if via is not RELAY and via != peer.tx_ep:
            peer.path.heard(via, now)  # a way to it we may not know yet: probe it
        if not s.confirmed:
            self.handshakes.confirm(peer, s, now)
        if not plaintext:
            return  # keepalive
        first = plaintext[0]
        if first >> 4 == 4 or first >> 4 == 6:
            if inner.from_peer(plaintext, peer.addr, peer.sources, self.prefix6, peer.sources6):
                peer.rx_bytes, peer.rx_packets = peer.rx_bytes + len(plaintext), peer.rx_packets + 1
                if msg[1]:  # a deeper checksum, left for our kernel (wire.py, offload.py)
                    plaintext = bytes((wire.PARTIAL, 0, msg[1], 0, msg[2])) + plaintext
                self.out.write_tun(plaintext)
            else:
                self.drops[Drop.SPOOFED_SOURCE] += 1
        elif first == wire.PROBE_REQUEST and len(plaintext) == wire.PROBE_LEN:
            self.probes.answer(peer, s, plaintext, via)
        elif first == wire.PROBE_REPLY and len(plaintext) == wire.PROBE_LEN:
            self.probes.replied(peer, plaintext, via, now)
        else:
            self.drops[Drop.BAD_INNER_PACKET] += 1

    # -- what the relay link brings -----------------------------------------------------

    def _relay_event(self, event, now: float) -> None:
        kind, value = event
        if kind == JOINED:
            self._joined(value)
        elif kind == DIRECTORY:
            if value.get("relays"):
                # a relay inside the overlay could only be reached through the overlay itself
                self.relay.learn([r for r in value["relays"] if (ep := endpoint.parse(r)) and self.outside.check(ep)])
            if self.mirror.apply(value):
                self.relay.directory_version = self.mirror.version
                self._sync_peers(now)
            if value["mtu"] and value["mtu"] != self.mtu.network:
                if self._adopt_mtu(value["mtu"]) and self.assignment is not None:
                    self._save()
        elif kind == CONTROL:
            self.publishing.receive(value, now)
        elif kind == REVOKED:
            self._stop(EXIT_REFUSED, "key_revoked", REVOKED_MESSAGE)
        elif kind == REFUSED:
            self._stop(EXIT_REFUSED, *value)

    def _joined(self, reply: dict) -> None:
        self.mtu.relay = reply["relay_mtu"]
        mtu_changed = self._adopt_mtu(reply["mtu"])
        assignment = Assignment(reply["name"], reply["address"], reply["network"], overlay6.usable(reply["network6"]))
        if assignment != self.assignment:
            self._assigned(assignment)  # saves the new MTU with it
        elif mtu_changed:
            self._save()

    def _assigned(self, assignment: Assignment) -> None:
        net, net6 = ipaddress.IPv4Network(assignment.network), assignment.network6
        conflict = overlay_conflict(net, self.config.protected[:1], self.config.host_claims)  # [:1]: the relay's
        if conflict is None and net6:
            conflict = overlay_conflict(ipaddress.IPv6Network(net6), (), self.config.host_claims)
        if conflict is not None:
            self._stop(EXIT_MISCONFIGURED, *conflict)
            return
        self.assignment, self.prefix6 = assignment, inner.prefix_of(net6)
        if net6:  # no peer's IPv6 prefix may take over the overlay's own (routes.py)
            self.routes.protected6 += (ipaddress.IPv6Network(net6),)
        self.outside.set(net, ipaddress.IPv6Network(net6) if net6 else None)
        self.effects.append(SetAddress(assignment.interface_address, self.mtu.interface, assignment.address6))
        self.routes.install(self.peers.values(), again=True)  # a run before may have left others
        self.effects.append(SetGateway(assignment.network, self.config.routes))
        self._save()

    def advertise(self, routes: tuple[str, ...], now: float) -> None:
        """The prefixes we route for others changed (a pod CIDR flannel leased): tell the relay
        in a new handshake, which carries them, and route for them from now on."""
        self.config = replace(self.config, routes=tuple(routes))
        self.routes.advertised = self.config.routes
        self.relay.advertise(self.config.routes, now)
        if self.assignment is not None:
            self.effects.append(SetGateway(self.assignment.network, self.config.routes))

    def accept(self, accept: bool) -> None:  # a reload turned accepting peers' prefixes on or off
        self.config = replace(self.config, accept_routes=accept)
        self.routes.set_accept(accept, self.peers.values())
        self.table.version += 1  # the data path's tables: routed destinations and sources

    def _adopt_mtu(self, network_mtu: int) -> bool:
        """The overlay MTU the relay says; True if tunneld0's changed (the caller saves it)."""
        changed = self.mtu.adopt(network_mtu)
        self.mtu.fit(self.peers.values())
        self.table.version += 1
        return changed

    def _save(self) -> None:
        self.effects.append(SaveState(self.relay.key, self.assignment, self.mtu.interface, self.config.lock,
                                      tuple(self.trust.known.items())))

    def _stop(self, exit_code: int, code: str, message: str) -> None:
        if not self.stopped:
            self.stopped = True
            for peer in self.peers.values():  # a revoked node must not go on talking to its peers
                self.handshakes.forget(peer)
            self.relay.drop()
            self.effects.append(Stop(exit_code, code, message))

    def _sync_peers(self, now: float) -> None:
        own = self.identity.public
        entries, remembered = self.trust.admit({a: e for a, e in self.mirror.entries.items() if e.key != own})
        if remembered and self.assignment is not None:
            self._save()
        for addr, peer in list(self.peers.items()):
            e = entries.get(addr)
            if e is None or e.key != peer.key:
                self.handshakes.forget(peer)
                del self.peers[addr]
                self.peers_by_key.pop(peer.key, None)
        for addr, e in entries.items():
            peer = self.peers.get(addr)
            if peer is None:
                peer = self.peers[addr] = Peer(e, self.table, self.identity, self.config.suite, self.env, now,
                                               self.config.ipv6)
                self.peers_by_key[e.key] = peer
            else:
                peer.update(e, now)
        self.mtu.fit(self.peers.values())
        self.routes.update(self.peers.values())
        self.table.version += 1

    # -- the daemon's --------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.relay.up

    def take_effects(self) -> list:
        effects = self.effects[:]
        self.effects.clear()  # in place: routes.py and the MTU append to this very list
        return effects

    def transport_lost(self, now: float) -> None:
        """The adapter's TCP stream to the relay closed: reconnect now, not after a timeout."""
        self.relay.transport_lost(now)

    def bye(self) -> None:
        self.relay.bye()

    def tick(self, now: float) -> None:
        if self.stopped:
            return
        # relayed traffic lately: longer than the relay may stay silent, so a stalled stream counts
        self.relay.active = any(p.tx_ep is RELAY and now - p.last_tx < 3.0 for p in self.peers.values())
        self.relay.tick(now)
        for peer in self.peers.values():
            self.handshakes.tick(peer, now)
            self.probes.tick(peer, now)

    def status(self) -> dict:
        a = self.assignment
        label = self.relay.endpoint or self.config.relay_label
        return {"role": "node", "name": a.name if a else self.config.name, "address": a.address if a else None,
                "address6": str(a.address6.ip) if a and a.network6 else None, "network": a.network if a else None,
                "network6": a.network6 if a else None, "mtu": self.mtu.interface, "network_mtu": self.mtu.network or None,
                "advertised_routes": list(self.config.routes), "accepted_routes": list(self.routes.accepted),
                "public_key": self.identity.public.hex(), "relay": self.relay.status(label),
                "peers": [p.row(label, a and a.network6) for p in sorted(self.peers.values(), key=lambda p: p.name)],
                **self.trust.status(), "counters": dict(self.counts), "drops": dict(self.drops)}
