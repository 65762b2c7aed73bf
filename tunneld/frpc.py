"""What replaces a frpc configuration, without I/O: `tunneld import-frpc`.

frp's client config (frpc.toml, frp 0.52 on; or the legacy frpc.ini) names a server and the
proxies that publish local services on the server's ports. On tunneld the relay takes the
server's place, and each tcp or udp proxy becomes a `[[publish]]` table in the relay's
config; secret and peer-to-peer proxies (stcp, xtcp, sudp) and visitors are not needed at
all, because nodes reach each other on the overlay. Everything else is said, proxy by
proxy, in one line each: nothing is dropped silently.

  convert(text, source, node)   -> Conversion: the relay's part, the node's part, the notes
"""

from __future__ import annotations

import configparser
import tomllib
from dataclasses import dataclass, field

from .config import DEFAULT_PORT
from .errors import ConfigError

LOCAL = ("", "127.0.0.1", "localhost", "0.0.0.0", "::1", "::")
OVERLAY_TYPES = ("stcp", "xtcp", "sudp")  # frp's ways for two clients to meet: the overlay does it
VHOST_TYPES = ("http", "https", "tcpmux")
# Per-proxy settings with no tunneld counterpart, as frpc.toml spells them (INI: snake_case)
NOT_CARRIED = {
    "transport.bandwidthLimit": "bandwidth limits",
    "transport.bandwidthLimitMode": "bandwidth limits",
    "healthCheck": "health checks",
    "loadBalancer": "load-balancer groups",
    "plugin": "plugins",
    "metadatas": "metadata",
    "annotations": "annotations",
}
ALWAYS = {"transport.useEncryption": "is always on: every hop is encrypted",
          "transport.useCompression": "is not needed: tunneld does not compress"}
INI_KEYS = {"local_ip": "localIP", "local_port": "localPort", "remote_port": "remotePort",
            "proxy_protocol_version": "transport.proxyProtocolVersion", "bandwidth_limit": "transport.bandwidthLimit",
            "use_encryption": "transport.useEncryption", "use_compression": "transport.useCompression",
            "group": "loadBalancer", "health_check_type": "healthCheck", "plugin": "plugin",
            "custom_domains": "customDomains", "subdomain": "subdomain", "server_name": "serverName"}


class FrpcError(ConfigError):
    pass


@dataclass
class Conversion:
    relay: list[dict] = field(default_factory=list)  # [[publish]] tables
    node: dict = field(default_factory=dict)  # the node's settings
    notes: list[str] = field(default_factory=list)

    def render(self, source: str, node: str) -> str:
        out = [f"# tunneld's settings in place of {source} (tunneld import-frpc)", "",
               "# On the relay (relay.toml), which takes frps's place:"]
        ports = sorted({p["remote-port"] for p in self.relay if p["remote-port"]})
        if ports:
            out += [f"allow-ports = {_toml([str(n) for n in ports])}  # or the range frps's allowPorts gave", ""]
        for p in self.relay:
            table = ["[[publish]]"] + [f"{k} = {_toml(v)}" for k, v in p.items()]
            if not p["remote-port"]:  # frps chose one: the operator must (a note says so)
                table = ["# " + line for line in table]
            out += table + [""]
        if not self.relay:
            out += ["# (nothing to publish)", ""]
        out.append(f"# On the node {node} (node.toml), which takes frpc's place:")
        out += [f"{k} = {_toml(v)}" for k, v in self.node.items()]
        if self.notes:
            out += ["", "# Notes:"] + [f"# - {n}" for n in self.notes]
        return "\n".join(out) + "\n"


def _toml(value) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def convert(text: str, source: str, node: str) -> Conversion:
    common, proxies, visitors = _load(text, source)
    c = Conversion()
    server = str(common.get("serverAddr", "0.0.0.0"))
    c.node["relay"] = f"{server}:{DEFAULT_PORT}"
    c.node["token-file"] = "/etc/tunneld/token"
    c.notes.append(f"the relay listens on {server}:{DEFAULT_PORT} (frps's port by default: stop frps first, or "
                   f"give serve another --listen port and the node the same); frp's serverPort "
                   f"{common.get('serverPort', 7000)} is not needed")
    if _flat(common).get("auth.token") or common.get("token"):
        c.notes.append("auth.token does not carry over: a node joins with a token of its own from 'tunneld token' "
                       "on the relay, put in /etc/tunneld/token (mode 0600)")
    for key in sorted(_flat(common)):
        if key not in ("serverAddr", "serverPort", "token") and not key.startswith("auth."):
            c.notes.append(f"{key} (frpc's own setting) is not carried over: tunneld's transport is UDP with TCP "
                           "fallback, always encrypted, and it logs to the journal")
    routes: list[str] = []
    for p in proxies:
        _proxy(c, p, node, routes)
    for v in visitors:
        c.notes.append(f"visitor {v.get('name', '?')!r} ({v.get('type', '?')}) is unnecessary: nodes reach each other "
                       "on the overlay, so connect to the other node's overlay address and port directly")
    if routes:
        c.node["advertise-routes"] = routes
    return c


def _proxy(c: Conversion, p: dict, node: str, routes: list) -> None:
    name, kind = str(p.get("name", "?")), str(p.get("type", "tcp")).lower()
    what = f"proxy {name!r} ({kind})"
    if kind in OVERLAY_TYPES:
        c.notes.append(f"{what} is unnecessary: nodes reach each other on the overlay, directly where the NATs "
                       "allow it; use the node's overlay address and port")
        return
    if kind in VHOST_TYPES:
        domains = p.get("customDomains") or p.get("subdomain") or ""
        c.notes.append(f"{what} is not carried over: tunneld publishes ports, not virtual hosts"
                       + (f" ({_toml(domains)})" if domains else "") + "; publish the port of a reverse proxy "
                       "(an ingress) that serves them")
        return
    if kind not in ("tcp", "udp"):
        c.notes.append(f"{what}: an unknown proxy type, not carried over")
        return
    flat = _flat(p)
    if "plugin" in p or "plugin.type" in flat:
        c.notes.append(f"{what} uses a plugin ({flat.get('plugin.type') or p.get('plugin')}), which tunneld does "
                       "not have: not carried over")
        return
    local_ip, port, remote = str(p.get("localIP", "127.0.0.1")), _int(p.get("localPort")), _int(p.get("remotePort"))
    if port is None:
        c.notes.append(f"{what} has no localPort: not carried over")
        return
    pub = {"name": name, "node": node, "port": port, "remote-port": remote or 0, "protocol": kind}
    version = str(flat.get("transport.proxyProtocolVersion", "")).lower()
    if version and kind == "udp":
        c.notes.append(f"{what}: PROXY protocol ({version}) is for TCP services on tunneld: not carried over")
    elif version == "v2":
        pub["proxy-protocol"] = 2
    elif version:
        c.notes.append(f"{what}: PROXY protocol {version} is sent as v2 (tunneld speaks only v2): check that the "
                       "service reads v2")
        pub["proxy-protocol"] = 2
    if not remote:
        c.notes.append(f"{what} has remotePort 0 (frps chose one): pick a port in the relay's allow-ports and set "
                       "remote-port")
    if local_ip not in LOCAL:
        c.notes.append(f"{what}: localIP {local_ip} is another host, and a publish carries a port of the node "
                       f"itself: not published. The node advertises {local_ip}/32, so that the overlay reaches it "
                       f"(tunneld routes approve {node} {local_ip}/32 on the relay); to publish it, run tunneld on "
                       "that host, or a forwarder on this node and publish the forwarder's port")
        if f"{local_ip}/32" not in routes:
            routes.append(f"{local_ip}/32")
        return
    if local_ip in ("127.0.0.1", "localhost", "::1"):
        c.notes.append(f"{what}: the service listens on {local_ip}; tunneld carries connections to the node's overlay "
                       "address, so make it listen there too (or on 0.0.0.0)")
    for key, says in ALWAYS.items():
        if flat.get(key) in (True, "true"):
            c.notes.append(f"{what}: {key} {says}")
    for key, label in NOT_CARRIED.items():
        if key in flat or any(k.startswith(key + ".") for k in flat):
            c.notes.append(f"{what}: {label} ({key}) are not carried over")
    c.relay.append(pub)


def _int(value) -> int | None:
    try:
        n = int(value)
    except (TypeError, ValueError):
        return None
    return n if 0 <= n < 65536 else None


def _flat(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: frpc.toml's dotted keys as the docs write them."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _load(text: str, source: str) -> tuple[dict, list[dict], list[dict]]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as toml_error:
        return _load_ini(text, source, toml_error)
    proxies, visitors = doc.pop("proxies", []), doc.pop("visitors", [])
    if not isinstance(proxies, list) or not isinstance(visitors, list) or not all(
            isinstance(p, dict) for p in proxies + visitors):
        raise FrpcError(f"{source}: proxies and visitors must be [[proxies]] and [[visitors]] tables")
    return doc, proxies, visitors


def _load_ini(text: str, source: str, toml_error) -> tuple[dict, list[dict], list[dict]]:
    """The legacy frpc.ini: [common], then one section per proxy or visitor (role = visitor)."""
    ini = configparser.ConfigParser(interpolation=None)
    try:
        ini.read_string(text)
    except configparser.Error:
        raise FrpcError(f"{source} is neither frpc.toml nor frpc.ini: {toml_error}") from None
    if not ini.has_section("common"):
        raise FrpcError(f"{source} is neither frpc.toml nor frpc.ini (no [common] section): {toml_error}")
    common = {("serverAddr" if k == "server_addr" else "serverPort" if k == "server_port" else k): v
              for k, v in ini["common"].items()}
    proxies, visitors = [], []
    for section in ini.sections():
        if section == "common":
            continue
        item = {"name": section}
        for k, v in ini[section].items():
            item[INI_KEYS.get(k, k)] = v
        (visitors if item.get("role") == "visitor" else proxies).append(item)
    return common, proxies, visitors
