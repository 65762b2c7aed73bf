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
(publish_not_served), so a node serves nothing its relay did not say it publishes. With
several relays, each one's pub stands on its own (it names the relay, "r"), and only a
relay the node knows (the directory lists it) may publish or take a work connection.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..drops import Drop
from .publish_relay import PUB_REFRESH

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
    at: str = ""  # the relay to open the work connection to ("": our home)


@dataclass(frozen=True)
class ServeUdp:
    flow: int
    port: int
    data: bytes
    name: str
    idle: float


@dataclass(frozen=True)
class Served:
    services: tuple  # ((name, protocol, port, idle), ...), of every relay that publishes


class NodePublishing:
    def __init__(self, effects: list, drops: Counter, relays=tuple):
        self.effects = effects
        self.drops = drops
        self.relays = relays  # () -> the relays we know ("host:port"): only they may ask
        # by the relay that publishes ("" our home, else "host:port"): name -> (protocol, port, idle)
        self.by_relay: dict[str, dict[str, tuple[str, int, float]]] = {}
        self.heard: dict[str, float] = {}
        self.stats: dict[str, Counter] = {}

    def _served(self, relay: str, proto: str, port: int, name=None) -> str | None:
        """The service a request is for: the one it names, if that is on the port."""
        services = self.by_relay.get(relay, {})
        if name in services and services[name][:2] == (proto, port):
            return name
        for n, (p, q, _) in sorted(services.items()):
            if (p, q) == (proto, port):
                return n
        self.drops[Drop.PUBLISH_NOT_SERVED] += 1
        return None

    def _relay(self, msg: dict, key: str) -> str | None:
        relay = msg.get(key, "")
        if relay and relay not in self.relays():
            self.drops[Drop.PUBLISH_NOT_SERVED] += 1  # a relay we do not know: no
            return None
        return relay

    def receive(self, msg: dict, now: float) -> None:
        kind = msg["t"]
        if kind == "pub":
            relay = self._relay(msg, "r")
            if relay is None:
                return
            self.by_relay[relay] = {name: (proto, port, float(idle)) for name, proto, port, idle in msg["s"]}
            self.heard[relay] = now
            for other in [r for r, at in self.heard.items() if r and now - at > 3 * PUB_REFRESH]:
                del self.by_relay[other], self.heard[other]  # a relay gone: its pubs stopped
            services = [(n, *v) for each in self.by_relay.values() for n, v in sorted(each.items())]
            for name, *_ in services:
                self.stats.setdefault(name, Counter({k: 0 for k in STATS}))
            self.effects.append(Served(tuple(services)))
        elif kind == "open":
            relay = self._relay(msg, "at")
            name = self._served(relay, "tcp", msg["port"], msg.get("s")) if relay is not None else None
            if name is not None:
                self.stats[name]["connections"] += 1
                self.effects.append(ServeTcp(msg["id"], msg["k"], msg["port"], msg["src"], msg["dst"], msg["pp"],
                                             name, relay))
        elif kind == "udp":
            relay = self._relay(msg, "r")
            name = self._served(relay, "udp", msg["p"]) if relay is not None else None
            if name is not None:
                st = self.stats[name]
                st["datagrams_in"] += 1
                st["bytes_in"] += len(msg["d"])
                self.effects.append(ServeUdp(msg["f"], msg["p"], msg["d"], name, self.by_relay[relay][name][2]))
        else:  # "shut", which only nodes send
            self.drops[Drop.UNEXPECTED_CONTROL] += 1

    def status(self) -> list[dict]:
        return [{"name": name, "protocol": proto, "port": port, "relay": relay or None, **self.stats[name]}
                for relay, services in sorted(self.by_relay.items())
                for name, (proto, port, _) in sorted(services.items())]
