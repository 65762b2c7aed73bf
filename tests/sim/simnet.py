"""An in-memory network for the pure engines: a relay, nodes, a clock, no sockets.

Messages are delivered in order through one queue; tests can drop, capture or
tamper with them through `tap`. Time only moves when the test calls advance().
Every random byte comes from one generator seeded by `seed`, so the same test with
the same seed puts the same bytes on the wire (transcript): a run can be replayed.

The engines' effects are carried out as the daemons would, but in memory: a node's
host changes are recorded on its SimNodeIO, the relay's store writes go to a
MemoryStore (or wait in `held_writes` while `hold_writes` is set).

Direct node-to-node datagrams pass a small NAT model at the receiver:
  "blocked"  nothing direct gets in (the default: traffic stays on the relay)
  "public"   everything gets in
  "cone"     only from endpoints this node has sent to (address and port restricted)
"""

from __future__ import annotations

import ipaddress
import random
from collections import deque

from tunneld.control.backoff import Backoff
from tunneld.control.registry import Registry
from tunneld.engine import effects as fx
from tunneld.engine.effects import Env
from tunneld.engine.node import Node, NodeConfig
from tunneld.engine.relay import Relay
from tunneld.proto.endpoint import RELAY
from tunneld.proto.handshake import Identity
from tunneld.proto.token import JoinToken
from tunneld.store.base import StoreError
from tunneld.store.memory import MemoryStore, run_now

NETWORK = ipaddress.IPv4Network("100.64.0.0/10")
NETWORK6 = ipaddress.IPv6Network("2001:db8:64::/64")


class SimNodeIO:
    """What a node's daemon would do with its output, recorded."""

    def __init__(self, net: "SimNet", name: str, endpoint, nat: str = "blocked"):
        self.net = net
        self.name = name
        self.endpoint = endpoint
        self.nat = nat
        self.contacted: set = set()
        self.tun: list[bytes] = []
        self.assignments = []  # every address the node put on its interface
        self.refusals = []  # (code, message) of each Stop
        self.tcp = False
        self.udp_blocked = False  # this node's network drops UDP: only its TCP stream works
        self.sent_over = {"udp": 0, "tcp": 0}
        self.mtus: list[int] = []  # every MTU the node set on its interface
        self.routes: list[str] = []  # the accepted routes, as last installed
        self.peer_routes: list[str] = []  # the peers' addresses (/32), as last installed
        self.saved = None  # the last node.json it wrote
        self.gateway = None
        self.serving: list = []  # publishing's effects (engine/publish_node.py), in order

    def send(self, ep, data):
        if ep is not RELAY:
            self.contacted.add(ep)
            self.net.queue.append((("direct", ep), data, self.endpoint))
            return
        transport = "tcp" if self.tcp else "udp"
        self.sent_over[transport] += 1
        if self.udp_blocked and transport == "udp":
            return
        self.net.queue.append(("relay", data, self.endpoint))

    def write_tun(self, packet):
        self.tun.append(packet)

    def relay_transport(self, tcp):
        self.tcp = tcp

    def relay_endpoint(self, address):
        self.relay_address = address

    def apply(self, effect, node: Node) -> None:
        if isinstance(effect, fx.SetAddress):
            self.assignments.append(node.assignment)
        elif isinstance(effect, fx.SetMtu):
            self.mtus.append(effect.mtu)
        elif isinstance(effect, fx.SetRoutes):  # the peers' own addresses apart from advertised prefixes
            network = ipaddress.IPv4Network(self.net.network)
            self.peer_routes = [p for p in effect.prefixes if ":" not in p and ipaddress.IPv4Network(p).subnet_of(network)]
            self.routes = [p for p in effect.prefixes if p not in self.peer_routes]
        elif isinstance(effect, fx.SaveState):
            self.saved = effect
        elif isinstance(effect, fx.SetGateway):
            self.gateway = effect
        elif isinstance(effect, fx.Stop):
            self.refusals.append((effect.code, effect.message))
        elif type(effect).__module__ == "tunneld.engine.publish_node":
            self.serving.append(effect)
        else:
            raise AssertionError(f"unknown effect {effect!r}")


class SimNet:
    def __init__(self, store=None, relay_identity=None, seed: int = 1, network=NETWORK, auto_approve=(),
                 lock: bytes | None = None):
        self.rng = random.Random(seed)
        self.now = 1000.0
        self.wall = 1_700_000_000.0
        self.queue: deque = deque()
        self.store = store or MemoryStore()
        self.network = network
        self.auto_approve = auto_approve
        self.lock = lock
        self.relay_identity = relay_identity or Identity.from_random(self.rng.randbytes)
        self.relay_up = True
        self.hold_writes = False  # the store is slow: writes wait in held_writes
        self.held_writes: list = []
        self.relay = self._new_relay()
        self.nodes: dict[str, Node] = {}
        self.ios: dict[str, SimNodeIO] = {}
        self.by_endpoint: dict = {}
        self.tap = None  # tap(dst, data, src) -> data to deliver, or None to drop
        self.delivered_to_relay: list[bytes] = []
        self.transcript: list[tuple] = []  # (to, data, from) of everything an engine received, in order
        self._port = 40000

    def env(self) -> Env:
        return Env(lambda: self.now, lambda: int(self.wall * 1e9), self.rng.randbytes)

    def _new_relay(self) -> Relay:
        registry = Registry(self.network, run_now(self.store.load()), auto_approve=self.auto_approve, lock=self.lock,
                            network6=NETWORK6)
        return Relay(self.relay_identity, registry, self._relay_send, self.env(), self.now, listen="192.0.2.1:7000")

    @property
    def registry(self) -> Registry:
        return self.relay.registry

    def _relay_send(self, ep, data):
        self.queue.append((ep, data, "relay"))

    def token(self, ttl=None, uses=0) -> JoinToken:
        """A token for any number of nodes (uses=0), unless a test says otherwise."""
        token = JoinToken.parse(self.relay.issue_token(ttl, uses))
        self.store_writes()
        return token

    def store_writes(self) -> None:
        """Carry out the relay's writes, as its daemon does (unless they are held)."""
        writes = self.relay.writes
        while writes:
            w = writes.popleft()
            if self.hold_writes:
                self.held_writes.append(w)
                continue
            self._write(w)

    def release_writes(self) -> None:
        self.hold_writes = False
        held, self.held_writes = self.held_writes, []
        for w in held:
            self._write(w)
        self.deliver()

    def _write(self, w) -> None:
        try:
            run_now(w.apply(self.store))
        except StoreError as exc:
            self.relay.failed(w, str(exc))
        else:
            self.relay.written(w)

    def add_node(self, name, token=None, identity=None, nat="blocked", join_as=None, **config):
        """A node called `name` here, joining as `join_as` (default: name)."""
        self._port += 1
        endpoint = ("203.0.113.9", self._port)
        io = SimNodeIO(self, name, endpoint, nat)
        token = token or self.token()
        node = Node(identity or Identity.from_random(self.rng.randbytes), token.relay_public,
                    NodeConfig(join_as or name, token.credential, **config), io, self.env(), self.now,
                    backoff=Backoff(rng=lambda: 1.0))
        self.nodes[name] = node
        self.ios[name] = io
        self.by_endpoint[endpoint] = name
        self.effects()
        return node

    def restart_relay(self):
        self.relay = self._new_relay()

    def effects(self) -> None:
        for name, node in self.nodes.items():
            if node.effects:
                for e in node.take_effects():
                    self.ios[name].apply(e, node)
        if self.relay.writes:
            self.store_writes()

    def deliver(self, limit=100000):
        for _ in range(limit):
            self.effects()
            if not self.queue:
                return
            dst, data, src = self.queue.popleft()
            if self.tap is not None:
                data = self.tap(dst, data, src)
                if data is None:
                    continue
            if dst == "relay":
                if self.relay_up:
                    self.delivered_to_relay.append(data)
                    self.transcript.append((dst, data, src))
                    self.relay.receive(data, src, self.now)
            elif isinstance(dst, tuple) and dst[0] == "direct":
                name = self.by_endpoint.get(dst[1])
                if name is not None:
                    io = self.ios[name]
                    if io.nat == "public" or (io.nat == "cone" and src in io.contacted):
                        self.transcript.append((name, data, src))
                        self.nodes[name].receive(data, src, self.now)
            else:
                name = self.by_endpoint.get(dst)
                if name is not None:
                    self.transcript.append((name, data, "relay"))
                    self.nodes[name].receive(data, RELAY, self.now)
        raise AssertionError("the simulated network did not settle")

    def advance(self, seconds, step=0.25):
        """Move time forward in steps, ticking everyone and delivering everything."""
        steps = max(1, round(seconds / step))
        for _ in range(steps):
            self.now += step
            self.wall += step
            if self.relay_up:
                self.relay.tick(self.now)
            for node in self.nodes.values():
                node.tick(self.now)
            self.deliver()

    def send_ip(self, src_name, dst_name, payload=b"hello"):
        """Put an IPv4 packet from src to dst into src's TUN side."""
        src = self.nodes[src_name].assignment.address
        dst = self.nodes[dst_name].assignment.address
        packet = ipv4_packet(src, dst, payload)
        self.nodes[src_name].from_tun(packet, self.now)
        self.deliver()
        return packet


def public_pair() -> tuple["SimNet", Node, Node]:
    """Two public nodes "a" and "b" that have made their session (a real handshake) and each
    sent the other a packet: the engines the data path's benches and tests drive."""
    net = SimNet()
    net.add_node("a", nat="public")
    net.add_node("b", nat="public")
    net.advance(3)
    net.send_ip("a", "b")
    net.send_ip("b", "a")
    net.advance(3)
    return net, net.nodes["a"], net.nodes["b"]


def ipv6_packet(src: str, dst: str, payload: bytes, proto: int = 17) -> bytes:
    header = bytes([0x60, 0, 0, 0]) + len(payload).to_bytes(2, "big") + bytes([proto, 64])
    return header + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload


def ipv4_packet(src: str, dst: str, payload: bytes, proto: int = 17) -> bytes:
    total = 20 + len(payload)
    header = bytes([0x45, 0, total >> 8, total & 0xFF, 0, 0, 0x40, 0, 64, proto, 0, 0])
    return header + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + payload
