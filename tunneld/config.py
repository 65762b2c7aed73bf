"""Command-line and config-file settings, validated into plain values.

A --config FILE is TOML with the same keys as the long options (dashes or
underscores); options on the command line win. Every bad value is a ConfigError
that names the fix.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import tomllib
from dataclasses import dataclass

from .errors import ConfigError

DEFAULT_NETWORK = "100.64.0.0/10"
DEFAULT_STATE_DIR = "/var/lib/tunneld"
DEFAULT_INTERFACE = "tunneld0"
DEFAULT_PORT = 7000


def load_file(path: str | None, allowed: set[str]) -> dict:
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read --config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--config {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    out = {}
    for key, value in data.items():
        norm = key.replace("-", "_")
        if norm not in allowed:
            raise ConfigError(f"--config {path}: unknown setting {key!r} "
                              f"(known: {', '.join(sorted(k.replace('_', '-') for k in allowed))})")
        out[norm] = value
    return out


def merged(cli: dict, path: str | None, defaults: dict) -> dict:
    """defaults < config file < command line (None on the command line means 'not given')."""
    settings = dict(defaults)
    settings.update(load_file(path, set(defaults)))
    settings.update({k: v for k, v in cli.items() if v is not None})
    return settings


def parse_port_range(text: str, where: str, error=ConfigError) -> tuple[int, int]:
    """"N" or "FIRST-LAST": 1-65535, the first not above the last; error(where: why) if not."""
    first, _, last = text.partition("-")
    try:
        lo, hi = int(first), int(last or first)
    except ValueError:
        raise error(f"{where}: a port is a number, a range FIRST-LAST") from None
    if not 1 <= lo <= hi <= 65535:
        raise error(f"{where}: ports are 1-65535, the first not above the last")
    return lo, hi


def parse_hostport(text, option: str, default_port: int | None = None) -> tuple[str, int]:
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{option} needs HOST:PORT")
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\s]+):(\d+)|([^:\s]+)", text)
    if not m:
        raise ConfigError(f"{option} {text!r} is not HOST:PORT (e.g. 192.0.2.1:{DEFAULT_PORT})")
    host = m.group(1) or m.group(3) or m.group(5)
    port_text = m.group(2) or m.group(4)
    if port_text is None:
        if default_port is None:
            raise ConfigError(f"{option} {text!r} has no port; write HOST:PORT")
        port = default_port
    else:
        port = int(port_text)
    if not 0 < port < 65536:
        raise ConfigError(f"{option} {text!r}: port must be 1-65535")
    return host, port


def parse_listen(text, option: str = "--listen") -> tuple[tuple[str, int], ...]:
    """Where the relay serves: HOST:PORT, or one of each family comma-separated, IPv6 in
    brackets ("192.0.2.1:7443,[2001:db8::1]:7443"). "[::]:PORT" alone is every address of
    both families; a name is its IPv4 address (as before IPv6)."""
    out: list[tuple[str, int]] = []
    for item in (i.strip() for i in str(text or "").split(",")):
        host, port = parse_hostport(item, option)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = ipaddress.IPv4Address(resolve_ipv4(host, option))
        if isinstance(ip, ipaddress.IPv6Address) and not item.startswith("["):
            raise ConfigError(f"{option} {item[:60]!r}: write an IPv6 address in brackets, [{ip}]:{port}")
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            raise ConfigError(f"{option} {item[:60]!r}: write an IPv4 address as such, {ip.ipv4_mapped}:{port}")
        if (str(ip), port) in out:
            raise ConfigError(f"{option} gives {item[:60]} twice")
        if any(":" in h for h, _ in out) == (ip.version == 6) and out:
            raise ConfigError(f"{option} gives two IPv{ip.version} addresses; give one address of each "
                              "family at most ([::]:PORT for all of them)")
        out.append((str(ip), port))
    if out == [("::", out[0][1])]:
        out.insert(0, ("0.0.0.0", out[0][1]))  # [::] alone: IPv4 too, on a socket of its own
    return tuple(out)


def resolve_all(host: str, option: str) -> list[str]:
    """A literal address, or every address a name has, of both families, as the resolver
    orders them."""
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_UNSPEC, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConfigError(f"{option}: cannot resolve {host!r} ({exc.strerror}); give an address or fix DNS") from None
    return list(dict.fromkeys(str(ipaddress.ip_address(i[4][0])) for i in infos
                              if i[0] in (socket.AF_INET, socket.AF_INET6)))


def routable(address: str) -> bool:
    """Whether this host has a route to address (a UDP connect sends nothing): a name's
    IPv6 address is no use to a host without IPv6, nor an IPv4 one to a host without IPv4."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((address, 9))
        return True
    except OSError:
        return False


def resolve_ipv4(host: str, option: str) -> str:
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConfigError(f"{option}: cannot resolve {host!r} ({exc.strerror}); "
                          "give an IPv4 address or fix DNS") from None
    return infos[0][4][0]


def parse_network(text) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(str(text), strict=True)
    except ValueError as exc:
        raise ConfigError(f"--network {text!r} is not an IPv4 CIDR ({exc}); e.g. {DEFAULT_NETWORK}") from None
    if net.prefixlen > 30:
        raise ConfigError(f"--network {text} is too small; use a prefix of /30 or larger")
    return net


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text) -> float | None:
    """'90', '90s', '30m', '24h', '7d'; '0' means never."""
    m = _DURATION.match(str(text).strip())
    if not m:
        raise ConfigError(f"--ttl {text!r} is not a duration like 30m, 24h or 7d (0 = never expires)")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    return None if seconds == 0 else seconds


@dataclass(frozen=True)
class ServeSettings:
    listen_host: str
    port: int
    network: ipaddress.IPv4Network
    state_dir: str
    log_level: str
    auto_approve_routes: tuple[str, ...] = ()
    lock: bytes | None = None  # the network lock's public key
    store: str | None = None  # etcd://H1:2379,... shared by several relays; None: SQLite in the state dir
    store_prefix: str = "/tunneld/"
    store_ca: str | None = None
    store_cert: str | None = None
    store_key: str | None = None
    advertise: str = ""  # host:port where nodes and the other relays reach this one
    workers: int = 1  # processes forwarding on the port (net/relay_workers.py)
    metrics: tuple[str, int] | None = None  # --metrics: where Prometheus scrapes /metrics
    log_format: str = "text"  # logs.py: text or json
    publish: tuple = ()  # publish.Publish: nodes' services on the relay's ports ([[publish]])
    allow_ports: tuple = ()  # ((first, last), ...): the ports a publish may take (allow-ports)
    network6: ipaddress.IPv6Network | None = None  # --network6; None: the one the network has, or a new ULA /64
    listen_more: tuple = ()  # ((host, port),): --listen's address of the other family, if it gives one


@dataclass(frozen=True)
class JoinSettings:
    relay_host: str
    relay_ip: str
    relay_port: int
    token_text: str
    name: str
    interface: str
    state_dir: str
    port: int
    log_level: str
    advertise_routes: tuple[str, ...] = ()
    accept_routes: bool = False
    snat_routes: bool = True
    relays: tuple[str, ...] = ()  # every --relay given, "ip:port", the first of them first
    pod_cidr: str = ""  # this node's pod network, routed natively: a CIDR, or flannel's subnet.env to follow
    workers: int = 1  # lanes of the data path, the node's own process included (net/node_workers.py)
    metrics: tuple[str, int] | None = None  # --metrics: where Prometheus scrapes /metrics
    log_format: str = "text"  # logs.py: text or json
    policy: object = None  # policy.Policy: what peers may open towards the node (--policy), or None


def parse_routes(value) -> tuple[str, ...]:
    """--advertise-routes: CIDRs, given repeatedly, comma-separated, or as a TOML list; checked
    as the relay checks them (control/registry.py)."""
    from .control.registry import RouteError, check_routes
    items = value if isinstance(value, (list, tuple)) else [value]
    texts = [t.strip() for item in items for t in str(item).split(",") if t.strip()]
    try:
        return check_routes(texts)
    except RouteError as exc:
        raise ConfigError(str(exc)) from None


def parse_prefixes(value, option: str) -> tuple[str, ...]:
    """CIDRs, given repeatedly, comma-separated, or as a TOML list (the default route too)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for text in (t.strip() for item in items for t in str(item).split(",") if t.strip()):
        try:
            out.append(str(ipaddress.ip_network(text, strict=True)))
        except ValueError:
            raise ConfigError(f"{option} {text[:40]!r} is not a prefix like 198.18.0.0/16 "
                              "or 2001:db8:70::/64") from None
    return tuple(out)


def check_log_level(level) -> str:
    level = str(level).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"--log-level {level!r}: use debug, info, warning or error")
    return level
