"""The relay's side of publishing, without I/O: which node serves each published service,
the UDP flows and TCP connections on their way, and the counts. The daemon
(net/publish_relay.py) owns the listening sockets and the streams.

In:  configure(entries)               the services now (config file and `tunneld publish`)
     udp_in(name, client, data, now)  a client's datagram on a published UDP port
     tcp_open(name, src, dst)         a client connected to a published TCP port
     work(frame)                      a work connection's first frame (proto/stream.py)
     from_node(m, msg, now)           a member's control message: udp (an answer), shut
     tick(now)                        resend "pub" where due, end idle UDP flows
Out: control messages on members' sessions (pub, open, udp), and the daemon's callbacks
     deliver(name, client, data)      a datagram for a client, from the service
     refused(conn_id)                 the node could not open that connection

A service is served only by its node's session here: a node homed on another relay, or
offline, or too old to know "publish", leaves the client refused and counted. The node
serves only what the latest "pub" lists (engine/publish_node.py); pub goes again after
every new session and every PUB_REFRESH, so that a lost one is repaired.
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
        self._ids = 0
        self.told: dict[str, tuple] = {}  # node -> (session pub went on, when, the list it said)

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

    def _member(self, node: str):
        """The online member serving node's services here, if it knows "publish"."""
        rec = self.relay.registry.by_name.get(node)
        if rec is None:
            return None
        m = self.relay.by_addr.get(ipaddress.IPv4Address(rec.address).packed)
        return m if m is not None and m.online and m.hello.has("publish") else None

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids

    # -- UDP -----------------------------------------------------------------------------

    def udp_in(self, name: str, client, data: bytes, now: float) -> None:
        p = self.entries.get(name)
        if p is None:
            return
        st = self.stats[name]
        m = self._member(p.node)
        f = self.by_client.get((name, client))
        if m is None:
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
        self.relay._control(m, {"t": "udp", "f": f.fid, "p": p.port, "d": data})

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
        m = self._member(p.node)
        if m is None or st["active"] >= p.max_connections:
            st["refused"] += 1
            return None
        conn_id = self._next_id()
        k = self.relay.env.random(32)
        self.pending[conn_id] = Pending(name, k, now + OPEN_TIMEOUT)
        st["active"] += 1
        self.relay._control(m, {"t": "open", "id": conn_id, "port": p.port, "k": k, "src": src, "dst": dst,
                                "pp": p.proxy_protocol, "s": name})
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
        kind = msg["t"]
        if kind == "udp":
            f = self.flows.get(msg["f"])
            p = self.entries.get(f.name) if f is not None else None
            if p is None or p.node != m.name:
                self.relay.drops[Drop.PUBLISH_UNKNOWN_FLOW] += 1
                return True
            f.last = now
            st = self.stats[f.name]
            st["datagrams_out"] += 1
            st["bytes_out"] += len(msg["d"])
            self.deliver(f.name, f.client, msg["d"])
            return True
        if kind == "shut":
            pending = self.pending.get(msg["id"])
            if pending is not None and self.entries.get(pending.name) is not None \
                    and self.entries[pending.name].node == m.name:
                self.abandon(msg["id"])
                self.refused(msg["id"])
            return True
        return False

    # -- time ----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        for conn_id in [i for i, p in self.pending.items() if now > p.deadline]:
            self.abandon(conn_id)
            self.refused(conn_id)
        for f in [f for f in self.flows.values() if now - f.last > self.entries[f.name].idle_timeout]:
            self._end_flow(f)
        for node, (session, at, said) in list(self.told.items()):
            m = self._member(node)
            if m is None:
                continue
            services = self.served_by(node)
            if session is m.keys.current and now - at < PUB_REFRESH and services == said:
                continue
            self.relay._control(m, {"t": "pub", "s": services})
            if services:
                self.told[node] = (m.keys.current, now, services)
            else:
                del self.told[node]  # told it serves nothing: done with it

    def status(self) -> list[dict]:
        out = []
        for p in sorted(self.entries.values(), key=lambda p: p.name):
            out.append({"name": p.name, "node": p.node, "port": p.port, "remote_port": p.remote_port,
                        "protocol": p.protocol, "proxy_protocol": p.proxy_protocol,
                        "max_connections": p.max_connections, "node_connected": self._member(p.node) is not None,
                        **self.stats[p.name]})
        return out

