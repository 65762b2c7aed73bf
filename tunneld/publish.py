"""Services of nodes published on the relay's public address, as the relay's config and
`tunneld publish add` give them, checked. No I/O here (net/publish_relay.py serves them).
Without allow-ports nothing may be published: the operator opens the ports first.

    allow-ports = ["18000-18999", "2222"]   # what a publish may take on the relay (frps's allowPorts)

    [[publish]]
    name = "web"
    node = "edge-1"
    port = 8080          # on the node's overlay address
    remote-port = 18080  # on the relay's public address
    protocol = "tcp"     # or "udp"
    proxy-protocol = 2   # optional: the client's address first, as PROXY protocol v2
    max-connections = 100  # optional (tcp): more wait for none, they are refused
    idle-timeout = 60    # optional (udp): seconds a flow lives without a datagram

  parse_allow(value)                 -> the allowed port ranges
  parse(tables, allow, listen_port)  -> Publish entries, or PublishError naming the problem
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config import parse_port_range
from .errors import ConfigError

NAME = re.compile(r"[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?")
KEYS = {"name", "node", "port", "remote-port", "protocol", "proxy-protocol", "max-connections", "idle-timeout"}
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_IDLE = 60.0


class PublishError(ConfigError):
    pass


@dataclass(frozen=True)
class Publish:
    name: str
    node: str
    port: int
    remote_port: int
    protocol: str = "tcp"
    proxy_protocol: int = 0
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout: float = DEFAULT_IDLE


def parse_allow(value) -> tuple[tuple[int, int], ...]:
    """allow-ports: "N" or "FIRST-LAST" strings (or numbers); empty: none may be published."""
    items = value if isinstance(value, list) else [value] if value not in (None, "") else []
    out = []
    for item in items:
        text = str(item).strip()
        out.append(parse_port_range(text, f"allow-ports {text[:20]!r}", PublishError))
    return tuple(sorted(out))


def allowed(port: int, allow) -> bool:
    return any(lo <= port <= hi for lo, hi in allow)


def parse(tables, allow, listen_port: int) -> tuple[Publish, ...]:
    """The [[publish]] tables, checked one by one and against each other."""
    if tables in (None, ""):
        return ()
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise PublishError("publish: write each service as a [[publish]] table")
    out: list[Publish] = []
    for i, t in enumerate(tables, 1):
        out.append(one(t, allow, listen_port, f"[[publish]] {i}"))
    check_together(out)
    return tuple(out)


def one(t: dict, allow, listen_port: int, where: str) -> Publish:
    unknown = set(t) - KEYS
    if unknown:
        raise PublishError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(KEYS))})")
    name = t.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise PublishError(f"{where}: name {str(name)[:40]!r} must be lower-case letters, digits, - and _")
    where = f"publish {name!r}"
    node = t.get("node")
    if not isinstance(node, str) or not node:
        raise PublishError(f"{where}: node names the node whose port is published")
    protocol = t.get("protocol", "tcp")
    if protocol not in ("tcp", "udp"):
        raise PublishError(f"{where}: protocol {str(protocol)[:10]!r}: give tcp or udp")
    port = _port(t.get("port"), f"{where}: port")
    remote = _port(t.get("remote-port"), f"{where}: remote-port")
    if remote == listen_port:
        raise PublishError(f"{where}: remote-port {remote} is the relay's own port")
    if not allowed(remote, allow):
        raise PublishError(f"{where}: remote-port {remote} is outside allow-ports "
                           f"({', '.join(f'{lo}-{hi}' if lo != hi else str(lo) for lo, hi in allow) or 'none'})")
    pp = t.get("proxy-protocol", 0)
    if pp not in (0, 2) or isinstance(pp, bool):
        raise PublishError(f"{where}: proxy-protocol {repr(pp)[:20]}: give 2 (PROXY protocol v2), or leave it out")
    if pp and protocol != "tcp":
        raise PublishError(f"{where}: proxy-protocol is for tcp services")
    most = t.get("max-connections", DEFAULT_MAX_CONNECTIONS)
    if not isinstance(most, int) or isinstance(most, bool) or not 1 <= most <= 65536:
        raise PublishError(f"{where}: max-connections {repr(most)[:20]}: give 1 to 65536")
    idle = t.get("idle-timeout", DEFAULT_IDLE)
    if not isinstance(idle, (int, float)) or isinstance(idle, bool) or not 1 <= idle <= 86400:
        raise PublishError(f"{where}: idle-timeout {repr(idle)[:20]}: give 1 to 86400 seconds")
    return Publish(name, node, port, remote, protocol, pp, most, float(idle))


def check_together(entries) -> None:
    names, ports = set(), {}
    for p in entries:
        if p.name in names:
            raise PublishError(f"publish {p.name!r} is given twice")
        names.add(p.name)
        key = (p.protocol, p.remote_port)
        if key in ports:
            raise PublishError(f"publish {p.name!r}: {p.protocol} port {p.remote_port} is already taken by "
                               f"publish {ports[key]!r}")
        ports[key] = p.name


def _port(value, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise PublishError(f"{where} {repr(value)[:20]}: give a port, 1-65535")
    return value
