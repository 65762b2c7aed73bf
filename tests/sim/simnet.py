"""An in-memory network for the pure engines: a relay, nodes, a clock, no sockets.

Messages are delivered in order through one queue; tests can drop, capture or
tamper with them through `tap`. Time only moves when the test calls advance().

Direct node-to-node datagrams pass a small NAT model at the receiver:
  "blocked"  nothing direct gets in (the default: traffic stays on the relay)
  "public"   everything gets in
  "cone"     only from endpoints this node has sent to (address and port restricted)
"""

from __future__ import annotations

import ipaddress
from collections import deque

from tunneld.control.backoff import Backoff
from tunneld.control.registry import Registry
from tunneld.engine.node import RELAY, Node
from tunneld.engine.relay import Relay
from tunneld.proto.handshake import Identity
from tunneld.store.memory import MemoryStore

NETWORK = ipaddress.IPv4Network("100.64.0.0/10")


class SimNodeIO:
    def __init__(self, net: "SimNet", name: str, endpoint, nat: str = "blocked"):
        self.net = net
        self.name = name
        self.endpoint = endpoint
        self.nat = nat
        self.contacted: set = set()
        self.tun: list[bytes] = []
        self.assignments = []
        self.refusals = []
        self.tcp = False
        self.udp_blocked = False  # this node's network drops UDP: only its TCP stream works
        self.sent_over = {"udp": 0, "tcp": 0}
        self.mtus: list[int] = []  # every MTU the engine asked the interface to take
        self.routes: list[str] = []  # the accepted routes, as last installed

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

    def joined(self, assignment):
        self.assignments.append(assignment)

    def refused(self, code, message):
        self.refusals.append((code, message))

    def relay_transport(self, tcp):
        self.tcp = tcp

    def set_mtu(self, mtu):
        self.mtus.append(mtu)

    def set_routes(self, prefixes):
        self.routes = list(prefixes)


class SimNet:
    def __init__(self, store=None, relay_identity=None):
        self.now = 1000.0
        self.wall = 1_700_000_000.0
        self.queue: deque = deque()
        self.store = store or MemoryStore()
        self.relay_identity = relay_identity or Identity.generate()
        self.registry = Registry(self.store, NETWORK)
        self.relay_up = True
        self.relay = self._new_relay()
        self.nodes: dict[str, Node] = {}
        self.ios: dict[str, SimNodeIO] = {}
        self.by_endpoint: dict = {}
        self.tap = None  # tap(dst, data, src) -> data to deliver, or None to drop
        self.delivered_to_relay: list[bytes] = []
        self._port = 40000

    def _new_relay(self):
        return Relay(self.relay_identity, self.registry, self._relay_send, self.now,
                     wall=lambda: self.wall, listen="192.0.2.1:7000")

    def _relay_send(self, ep, data):
        self.queue.append((ep, data, "relay"))

    def token(self, ttl=None):
        return self.registry.issue_token(self.relay_identity.public, ttl, self.wall)

    def add_node(self, name, token=None, identity=None, nat="blocked", **kw):
        self._port += 1
        endpoint = ("203.0.113.9", self._port)
        io = SimNodeIO(self, name, endpoint, nat)
        token = token or self.token()
        node = Node(identity or Identity.generate(), token.relay_public, name, token.credential, io,
                    self.now, wall_ns=lambda: int(self.wall * 1e9), backoff=Backoff(rng=lambda: 1.0),
                    clock=lambda: self.now, **kw)
        self.nodes[name] = node
        self.ios[name] = io
        self.by_endpoint[endpoint] = name
        return node

    def restart_relay(self):
        self.relay = self._new_relay()

    def deliver(self, limit=100000):
        for _ in range(limit):
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
                    self.relay.receive(data, src, self.now)
            elif isinstance(dst, tuple) and dst[0] == "direct":
                name = self.by_endpoint.get(dst[1])
                if name is not None:
                    io = self.ios[name]
                    if io.nat == "public" or (io.nat == "cone" and src in io.contacted):
                        self.nodes[name].receive(data, src, self.now)
            else:
                name = self.by_endpoint.get(dst)
                if name is not None:
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


def ipv4_packet(src: str, dst: str, payload: bytes, proto: int = 17) -> bytes:
    total = 20 + len(payload)
    header = bytes([0x45, 0, total >> 8, total & 0xFF, 0, 0, 0x40, 0, 64, proto, 0, 0])
    return header + ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + payload
