"""The relay's side of publishing, without I/O: which node serves each published service,
the UDP flows and TCP connections on their way, and the counts. The daemon
(net/publish_relay.py) owns the listening sockets and the streams.

In:  configure(entries)               the services now (config file and `tunneld publish`)
     udp_in(name, client, data, now)  a client's datagram on a published UDP port
     tcp_open(name, src, dst)         a client connected to a published TCP port
     work(frame)                      a work connection's first frame (proto/stream.py)
     from_node(m, msg, now)           a member's control message: udp (an answer), shut
     from_mesh(boot, addr, msg, now)  the same through another relay, either way
     tick(now)                        resend "pub" where due, end idle UDP flows
Out: control messages on members' sessions (pub, open, udp), and the daemon's callbacks
     deliver(name, client, data)      a datagram for a client, from the service
     refused(conn_id)                 the node could not open that connection

A node homed here is asked over its session; one homed on another relay of the network
through that relay (the mesh, proto/mesh.py: kind CONTROL), which passes the message on
and sends the node's answers back (from_mesh). Such messages name this relay ("r" in
pub and udp, "at" in open: where the work connection goes). A node offline, or too old
to know "publish", leaves the client refused and counted. The node serves only what the
latest "pub" of each relay lists (engine/publish_node.py); pub goes again after every new
session or home and every PUB_REFRESH, so that a lost one is repaired.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass

from ..drops import Drop
from ..proto.stream import proves, read_work

PUB_REFRESH = 30.0
OPEN_TIMEOUT = 10.0  # a node that does not come back with the work connection by then: refused
MAX_FLOWS = 4096  # UDP flows of one service at once (its max-connections when lower)
MAX_ASKED = 65536  # flows and connections other relays asked of nodes homed here, remembered
ASKED_IDLE = 300.0  # ... this long after their last datagram
STATS = ("connections", "active", "refused", "errors", "bytes_in", "bytes_out", "flows", "datagrams_in",
         "datagrams_out")


@dataclass
class Pending:
    name: str
    k: bytes
    deadline: float


class Flow:
    __slots__ = ("fid", "name", "client", "last")

    def __init__(self, fid: int, name: str, client, now: float):
        self.fid, self.name, self.client, self.last = fid, name, client, now


class RelayPublishing:
    def __init__(self, relay, deliver, refused):
        self.relay = relay
        self.deliver = deliver
        self.refused = refused
        self.entries: dict = {}  # name -> publish.Publish
        self.stats: dict[str, Counter] = {}
        self.flows: dict[int, Flow] = {}
        self.by_client: dict[tuple, Flow] = {}  # (name, client) -> its flow
        self.pending: dict[int, Pending] = {}
        # ids unique across relays: a node homed here answers flows of others too
        self._ids = (int.from_bytes(relay.env.random(4), "big") & 0x7FFFFFFF) << 32  # under msgpack's 2^63
        self.told: dict[str, tuple] = {}  # node -> (session or home pub went by, when, the list it said)
        self.asked: dict[tuple, list] = {}  # (node address, "f" or "id", number) -> [relay's boot, when]
        self._asked_sweep = 0.0

    def configure(self, entries) -> None:
        self.entries = {p.name: p for p in entries}
        for name in list(self.stats):
            if name not in self.entries:
                del self.stats[name]
        for name in self.entries:
            self.stats.setdefault(name, Counter({k: 0 for k in STATS}))
        for f in [f for f in self.flows.values() if f.name not in self.entries]:
            self._end_flow(f)
        for node in set(self.told) | {p.node for p in entries}:
            self.told[node] = (None, float("-inf"), None)  # say it at the next tick

    def served_by(self, node: str) -> list:
        return [[p.name, p.protocol, p.port, int(p.idle_timeout)]
                for p in sorted(self.entries.values(), key=lambda p: p.name) if p.node == node]

    def _route(self, node: str):
        """How node's services are reached: (member, None) homed here, (None, address)
        homed on another relay; None: offline, or it does not know "publish"."""
        rec = self.relay.registry.by_name.get(node)
        if rec is None:
            return None
        addr = ipaddress.IPv4Address(rec.address).packed
        m = self.relay.by_addr.get(addr)
        if m is not None:
            return (m, None) if m.online and m.hello.has("publish") else None
        c = self.relay.cluster
        if c is not None and c.home_of(addr) is not None and c.can_publish(node):
            return None, addr
        return None

    def _send(self, route, msg: dict, origin: str) -> None:
        m, addr = route
        if m is not None:
            self.relay._control(m, msg)
        else:  # through its home: the message names us, where answers and work connections come
            msg[origin] = self.relay.listen
            self.relay.cluster.control(addr, msg)

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    # -- UDP -----------------------------------------------------------------------------

    def udp_in(self, name: str, client, data: bytes, now: float) -> None:
        p = self.entries.get(name)
        if p is None:
            return
        st = self.stats[name]
        route = self._route(p.node)
        f = self.by_client.get((name, client))
        if route is None:
            st["refused"] += 1
            return
        if f is None:
            if st["active"] >= min(p.max_connections, MAX_FLOWS):
                st["refused"] += 1
                return
            f = Flow(self._next_id(), name, client, now)
            self.flows[f.fid] = self.by_client[(name, client)] = f
            st["flows"] += 1
            st["active"] += 1
        f.last = now
        st["datagrams_in"] += 1
        st["bytes_in"] += len(data)
        self._send(route, {"t": "udp", "f": f.fid, "p": p.port, "d": data}, "r")

    def _end_flow(self, f: Flow) -> None:
        del self.flows[f.fid]
        del self.by_client[(f.name, f.client)]
        st = self.stats.get(f.name)
        if st is not None:
            st["active"] -= 1

    # -- TCP -----------------------------------------------------------------------------

    def tcp_open(self, name: str, src: str, dst: str, now: float) -> int | None:
        """A client connected: the id its work connection will name, or None (refused)."""
        p = self.entries.get(name)
        if p is None:
            return None
        st = self.stats[name]
        route = self._route(p.node)
        if route is None or st["active"] >= p.max_connections:
            st["refused"] += 1
            return None
        conn_id = self._next_id()
        k = self.relay.env.random(32)
        self.pending[conn_id] = Pending(name, k, now + OPEN_TIMEOUT)
        st["active"] += 1
        self._send(route, {"t": "open", "id": conn_id, "port": p.port, "k": k, "src": src, "dst": dst,
                           "pp": p.proxy_protocol, "s": name}, "at")
        return conn_id

    def work(self, frame: bytes) -> tuple[int, bytes, str] | None:
        """A work connection's first frame: (conn_id, k, service) when it proves k, once."""
        conn_id = read_work(frame)
        pending = self.pending.get(conn_id) if conn_id is not None else None
        if pending is None or not proves(frame, pending.k):
            self.relay.drops[Drop.WORK_UNPROVEN] += 1
            return None
        del self.pending[conn_id]
        self.stats[pending.name]["connections"] += 1
        return conn_id, pending.k, pending.name

    def closed(self, name: str, error: bool) -> None:
        """A connection of service name ended (given work() or tcp_open() took it)."""
        st = self.stats.get(name)
        if st is not None:
            st["active"] -= 1
            st["errors"] += error

    def abandon(self, conn_id: int) -> None:
        """The client left, or its wait ran out, before the node came back."""
        pending = self.pending.pop(conn_id, None)
        if pending is not None:
            self.closed(pending.name, error=True)

    # -- from the node -------------------------------------------------------------------

    def from_node(self, m, msg: dict, now: float) -> bool:
        """A member's udp (an answer) or shut: for a client here, or for another relay's."""
        kind = msg["t"]
        if kind not in ("udp", "shut"):
            return False
        key = (m.addr, "f" if kind == "udp" else "id", msg["f" if kind == "udp" else "id"])
        asked = self.asked.get(key)
        if asked is not None and self.relay.cluster is not None:
            asked[1] = now
            self.relay.cluster.control(m.addr, msg, boot=asked[0])
        else:
            self._answer(m.addr, msg, now)
        return True

    def from_mesh(self, boot: bytes, addr: bytes, msg: dict, now: float) -> None:
        """Through another relay: its request for a node homed here (which names that relay),
        or a node's answer to ours."""
        kind = msg["t"]
        if (kind == "open" and "at" in msg) or (kind in ("udp", "pub") and "r" in msg):
            m = self.relay.by_addr.get(addr)
            if m is None or not m.online or not m.hello.has("publish"):
                self.relay.drops[Drop.PUBLISH_NOT_HOMED] += 1
                return
            if kind != "pub" and (len(self.asked) < MAX_ASKED or self._sweep(now, force=True)):
                self.asked[(addr, "f" if kind == "udp" else "id", msg["f" if kind == "udp" else "id"])] = [boot, now]
            self.relay._control(m, msg)
        elif kind in ("udp", "shut"):
            self._answer(addr, msg, now)
        else:
            self.relay.drops[Drop.UNEXPECTED_CONTROL] += 1

    def _answer(self, addr: bytes, msg: dict, now: float) -> None:
        """A node's (at addr) answer: a datagram for a client of ours, or a refusal."""
        if msg["t"] == "udp":
            f = self.flows.get(msg["f"])
            p = self.entries.get(f.name) if f is not None else None
            if p is None or not self._is(p.node, addr):
                self.relay.drops[Drop.PUBLISH_UNKNOWN_FLOW] += 1
                return
            f.last = now
            st = self.stats[f.name]
            st["datagrams_out"] += 1
            st["bytes_out"] += len(msg["d"])
            self.deliver(f.name, f.client, msg["d"])
            return
        pending = self.pending.get(msg["id"])
        p = self.entries.get(pending.name) if pending is not None else None
        if p is not None and self._is(p.node, addr):
            self.abandon(msg["id"])
            self.refused(msg["id"])

    def _is(self, node: str, addr: bytes) -> bool:
        rec = self.relay.registry.by_name.get(node)
        return rec is not None and ipaddress.IPv4Address(rec.address).packed == addr

    def _sweep(self, now: float, force: bool = False) -> bool:
        """Forget what other relays asked that went quiet; True if there is room now."""
        if force or now >= self._asked_sweep:
            self._asked_sweep = now + 10.0
            for key in [k for k, (_, at) in self.asked.items() if now - at > ASKED_IDLE]:
                del self.asked[key]
        return len(self.asked) < MAX_ASKED

    # -- time ----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        for conn_id in [i for i, p in self.pending.items() if now > p.deadline]:
            self.abandon(conn_id)
            self.refused(conn_id)
        for f in [f for f in self.flows.values() if now - f.last > self.entries[f.name].idle_timeout]:
            self._end_flow(f)
        self._sweep(now)
        for node, (way, at, said) in list(self.told.items()):
            route = self._route(node)
            if route is None:
                continue
            m, addr = route
            now_way = m.keys.current if m is not None else self.relay.cluster.home_of(addr)
            services = self.served_by(node)
            if way == now_way and now - at < PUB_REFRESH and services == said:
                continue
            self._send(route, {"t": "pub", "s": services}, "r")
            if services:
                self.told[node] = (now_way, now, services)
            else:
                del self.told[node]  # told it serves nothing: done with it

    def status(self) -> list[dict]:
        out = []
        for p in sorted(self.entries.values(), key=lambda p: p.name):
            out.append({"name": p.name, "node": p.node, "port": p.port, "remote_port": p.remote_port,
                        "protocol": p.protocol, "proxy_protocol": p.proxy_protocol,
                        "max_connections": p.max_connections, "node_connected": self._route(p.node) is not None,
                        **self.stats[p.name]})
        return out

