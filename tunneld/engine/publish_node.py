"""A node's side of publishing, without I/O: which of its ports the relay publishes (the
latest "pub"), each "open" and "udp" checked against them, and the counts. The daemon
(net/publish_node.py) opens the connections and sockets.

In:  receive(msg)   pub, open or udp from the relay (the relay link passes on what it
                    does not handle itself)
Out: effects, appended to the node's list in order:
     ServeTcp   open a work connection to the relay and a connection to the service
     ServeUdp   a datagram for the service, on flow f's socket
     Served     the services published now: the daemon ends what they no longer cover

A relay can ask only for what it published; anything else is dropped and counted
(publish_not_served), so a node serves nothing its relay did not say it publishes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..drops import Drop

STATS = ("connections", "refused", "errors", "bytes_in", "bytes_out", "flows", "datagrams_in", "datagrams_out")


@dataclass(frozen=True)
class ServeTcp:
    conn_id: int
    k: bytes
    port: int
    src: str  # the client, as the relay saw it
    dst: str  # the relay's published address
    proxy_protocol: int
    name: str


@dataclass(frozen=True)
class ServeUdp:
    flow: int
    port: int
    data: bytes
    name: str
    idle: float


@dataclass(frozen=True)
class Served:
    services: tuple  # ((name, protocol, port, idle), ...)


class NodePublishing:
    def __init__(self, effects: list, drops: Counter):
        self.effects = effects
        self.drops = drops
        self.services: dict[str, tuple[str, int, float]] = {}  # name -> (protocol, port, idle)
        self.ports: dict[tuple[str, int], str] = {}  # (protocol, port) -> the first service on it
        self.stats: dict[str, Counter] = {}

    def _served(self, proto: str, port: int, name=None) -> str | None:
        """The service a request is for: the one it names, if that is on the port."""
        if name is not None and self.services.get(name, ())[:2] == (proto, port):
            return name
        served = self.ports.get((proto, port))
        if served is None:
            self.drops[Drop.PUBLISH_NOT_SERVED] += 1
        return served

    def receive(self, msg: dict) -> None:
        kind = msg["t"]
        if kind == "pub":
            self.services = {name: (proto, port, float(idle)) for name, proto, port, idle in msg["s"]}
            self.ports = {}
            for name, (proto, port, _) in sorted(self.services.items()):
                self.ports.setdefault((proto, port), name)
                self.stats.setdefault(name, Counter({k: 0 for k in STATS}))
            self.effects.append(Served(tuple(tuple(e) for e in msg["s"])))
        elif kind == "open":
            name = self._served("tcp", msg["port"], msg.get("s"))
            if name is not None:
                self.stats[name]["connections"] += 1
                self.effects.append(ServeTcp(msg["id"], msg["k"], msg["port"], msg["src"], msg["dst"], msg["pp"],
                                             name))
        elif kind == "udp":
            name = self._served("udp", msg["p"])
            if name is not None:
                st = self.stats[name]
                st["datagrams_in"] += 1
                st["bytes_in"] += len(msg["d"])
                self.effects.append(ServeUdp(msg["f"], msg["p"], msg["d"], name, self.services[name][2]))
        else:  # "shut", which only nodes send
            self.drops[Drop.UNEXPECTED_CONTROL] += 1

    def status(self) -> list[dict]:
        return [{"name": name, "protocol": proto, "port": port, **self.stats[name]}
                for name, (proto, port, _) in sorted(self.services.items())]
