"""tunneld's command line: parse, validate, call the library, exit.

  0 ok, 1 unexpected failure, 2 usage or configuration error, 3 refused by the relay.
Every error is one line on stderr that says what to do; no traceback for an
operator's mistake. The names of commands and options are a contract (README,
"Commands"): add, never rename.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys

import click

from . import __version__, logs
from .cli_lock import lock_group
from .cli_publish import import_frpc, publish
from .cli_relay import revoke, routes, token
from .control import overlay6
from .config import (DEFAULT_INTERFACE, DEFAULT_NETWORK, DEFAULT_STATE_DIR, JoinSettings, ServeSettings,
                     check_log_level, merged, parse_hostport, parse_listen, parse_network, parse_prefixes,
                     parse_routes, resolve_all, resolve_ipv4, routable)
from .errors import EXIT_USAGE, ConfigError, TunneldError
from .proto import endpoint
from .state import SOCKET_FILE

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _log_format(value) -> str:
    if value not in logs.FORMATS:
        raise ConfigError(f"--log-format {str(value)[:20]!r}: give text or json")
    return value


def _finish(result: tuple[int, str]) -> int:
    code, message = result
    if message:
        click.echo(f"tunneld: {message}", err=True)
    return code


@click.group(context_settings=_CONTEXT)
@click.version_option(__version__, prog_name="tunneld")
def cli():
    """An encrypted overlay for Kubernetes nodes that cannot reach each other.

    Run `tunneld serve` on a host with a public address, `tunneld token` there
    to print a join token, and `tunneld join` on every node.
    """


@cli.command()
@click.option("--listen", metavar="HOST:PORT[,[V6]:PORT]", help="UDP and TCP addresses to serve on, one of each "
                                                              "family, e.g. 0.0.0.0:7000 or [::]:7000 for all.")
@click.option("--network", metavar="CIDR", help=f"Overlay addresses to hand out [{DEFAULT_NETWORK}].")
@click.option("--network6", metavar="CIDR", help="The overlay's IPv6 prefix, /96 or larger [a random unique "
                                                 "local /64, chosen once and kept].")
@click.option("--state-dir", metavar="DIR", help=f"Key, node database, control socket [{DEFAULT_STATE_DIR}].")
@click.option("--config", metavar="FILE", help="TOML file with the same settings.")
@click.option("--log-level", metavar="LEVEL", help="debug, info, warning or error [info].")
@click.option("--lock", metavar="PUBKEY", help="Lock the network: only keys endorsed by this lock key "
                                               "(tdl1.…, from 'tunneld lock init') join.")
@click.option("--auto-approve-routes", metavar="CIDR[,CIDR]", multiple=True,
              help="Advertised routes inside these prefixes take effect without 'tunneld routes approve'.")
@click.option("--store", metavar="URL", help="Share the network's state with other relays in etcd: "
                                             "etcd://H1:2379,H2:2379,H3:2379 (etcds:// for TLS).")
@click.option("--store-prefix", metavar="PREFIX", help="Key prefix in etcd, one per network [/tunneld/].")
@click.option("--store-ca", metavar="FILE", help="CA certificate that signed etcd's (TLS).")
@click.option("--store-cert", metavar="FILE", help="Client certificate for etcd (TLS).")
@click.option("--store-key", metavar="FILE", help="Key of the client certificate (TLS).")
@click.option("--advertise", metavar="HOST:PORT", help="Where nodes and other relays reach this relay "
                                                       "[the --listen address].")
@click.option("--metrics", metavar="HOST:PORT", help="Serve Prometheus metrics at http://HOST:PORT/metrics [off].")
@click.option("--log-format", metavar="text|json", help="One line per record, as text or JSON [text].")
@click.option("--workers", metavar="N", type=int, help="Processes forwarding relayed traffic on the port, "
                                                       "the relay's own included [1].")
def serve(listen, network, network6, state_dir, config, log_level, lock, auto_approve_routes, store, store_prefix,
          store_ca, store_cert, store_key, advertise, metrics, log_format, workers):
    """Run the relay (rendezvous and forwarder) in the foreground."""
    given = dict(listen=listen, network=network, network6=network6, state_dir=state_dir, log_level=log_level, lock=lock,
                 auto_approve_routes=list(auto_approve_routes) or None, store=store, store_prefix=store_prefix,
                 store_ca=store_ca, store_cert=store_cert, store_key=store_key, advertise=advertise,
                 metrics=metrics, log_format=log_format, workers=workers)
    settings = _serve_settings(given, config)
    logs.setup(settings.log_level, settings.log_format)
    from .net.base import run
    from .net.relayd import RelayDaemon
    return _finish(run(RelayDaemon(settings, lambda: _serve_settings(given, config)).run()))


def _serve_settings(given: dict, config: str | None) -> ServeSettings:
    """The command line's settings over the config file's, checked; again on every reload."""
    s = merged(given, config,
               {"listen": None, "network": DEFAULT_NETWORK, "network6": None, "state_dir": DEFAULT_STATE_DIR,
                "log_level": "info", "lock": None, "auto_approve_routes": [], "store": None, "store_prefix": "/tunneld/",
                "store_ca": None, "store_cert": None, "store_key": None, "advertise": None, "metrics": None,
                "log_format": "text", "workers": 1, "publish": None, "allow_ports": None})
    if not s["listen"]:
        raise ConfigError("serve needs --listen HOST:PORT, e.g. --listen 0.0.0.0:7000")
    (host, port), *more = parse_listen(s["listen"])
    lock_public = None
    if s["lock"]:
        from .proto.lock import LockError, parse_public
        try:
            lock_public = parse_public(str(s["lock"]))
        except LockError as exc:
            raise ConfigError(f"--lock: {exc}") from None
    auto = parse_prefixes(s["auto_approve_routes"], "--auto-approve-routes")
    advertise = _advertise(s, host, port)
    workers = _check_workers(s["workers"])
    from . import publish
    allow = publish.parse_allow(s["allow_ports"])
    return ServeSettings(host, port, parse_network(s["network"]), s["state_dir"],
                         check_log_level(s["log_level"]), auto, lock_public, s["store"] or None,
                         str(s["store_prefix"]), s["store_ca"], s["store_cert"], s["store_key"], advertise,
                         workers, _metrics(s["metrics"]), _log_format(s["log_format"]),
                         publish.parse(s["publish"], allow, port), allow,
                         overlay6.parse_prefix(s["network6"]) if s["network6"] else None, tuple(more))


MAX_WORKERS = 64


def _check_workers(workers) -> int:
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"--workers {str(workers)[:20]!r}: give 1 to {MAX_WORKERS}")
    return workers


def _metrics(value) -> tuple[str, int] | None:
    """--metrics HOST:PORT, or none."""
    if not value:
        return None
    host, port = parse_hostport(str(value), "--metrics")
    return resolve_ipv4(host, "--metrics"), port


def _policy(path):
    """--policy FILE, read and checked (again on every reload), or none."""
    if not path:
        return None
    if not isinstance(path, str):
        raise ConfigError("policy takes the path of a TOML file")
    from .policy import parse
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the policy {path}: {exc.strerror}") from None
    from .host.firewall import check_available
    check_available()
    return parse(text, path)


def _cores() -> int:
    """The cores this process may run on (a cgroup's or taskset's share, not the machine's)."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))


def _advertise(s: dict, host: str, port: int) -> str:
    """Where this relay is reached; with --store, checked: other relays and nodes use it."""
    if s["store"]:
        from .store.etcdgw import parse_url
        try:
            parse_url(str(s["store"]))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        for option in ("store_ca", "store_cert", "store_key"):
            if s[option] and not os.path.isfile(str(s[option])):
                raise ConfigError(f"--{option.replace('_', '-')} {str(s[option])[:80]}: no such file")
        if bool(s["store_cert"]) != bool(s["store_key"]):
            raise ConfigError("--store-cert and --store-key go together")
    if s["advertise"]:
        ahost, aport = parse_hostport(s["advertise"], "--advertise")
        return endpoint.format((_literal6(ahost) or resolve_ipv4(ahost, "--advertise"), aport))
    if s["store"] and host in ("0.0.0.0", "::"):
        raise ConfigError("with --store, give --advertise HOST:PORT: the address nodes and the other relays "
                          f"reach this relay at (--listen {endpoint.format((host, port))} does not say)")
    return endpoint.format((host, port))


def _literal6(host: str) -> str | None:
    try:
        return str(ipaddress.IPv6Address(host))
    except ValueError:
        return None


@cli.command()
@click.option("--relay", metavar="HOST:PORT[,HOST:PORT]", help="The relay's public address (IPv6 in brackets; a "
                                                             "name: all its addresses, IPv6 first); several "
                                                             "relays of one network comma-separated.")
@click.option("--token", "token_", metavar="TOKEN", help="A join token from 'tunneld token'.")
@click.option("--token-file", metavar="FILE", help="A file holding the join token.")
@click.option("--name", metavar="NAME", help="This node's name [the host name].")
@click.option("--interface", metavar="NAME", help=f"The TUN interface [{DEFAULT_INTERFACE}].")
@click.option("--state-dir", metavar="DIR", help=f"Key, last address, control socket [{DEFAULT_STATE_DIR}].")
@click.option("--config", metavar="FILE", help="TOML file with the same settings.")
@click.option("--port", metavar="PORT", type=int, help="Local UDP port [0: any].")
@click.option("--advertise-routes", metavar="CIDR[,CIDR]", multiple=True,
              help="Prefixes this node routes for overlay members that accept them (a gateway).")
@click.option("--accept-routes", is_flag=True, default=None,
              help="Route the prefixes other nodes advertise through tunneld0.")
@click.option("--snat-routes/--no-snat-routes", default=None,
              help="Masquerade overlay traffic into the advertised prefixes, so that answers come back "
                   "through this node [on].")
@click.option("--pod-cidr", metavar="CIDR|FILE",
              help="This node's pod network, carried natively (routed mode, no VXLAN inside the tunnel): "
                   "a CIDR, or the path of flannel's subnet.env to follow. Implies --accept-routes.")
@click.option("--metrics", metavar="HOST:PORT", help="Serve Prometheus metrics at http://HOST:PORT/metrics [off].")
@click.option("--log-format", metavar="text|json", help="One line per record, as text or JSON [text].")
@click.option("--workers", metavar="N", type=int, help="Processes carrying the node's traffic, each on a queue of "
                                                       "the interface, the node's own included [the cores].")
@click.option("--policy", metavar="FILE", help="Admit from peers only what this TOML file allows; answers to "
                                               "what the node opened always pass [everything admitted].")
@click.option("--log-level", metavar="LEVEL", help="debug, info, warning or error [info].")
def join(relay, token_, token_file, name, interface, state_dir, config, port, advertise_routes, accept_routes,
         snat_routes, pod_cidr, metrics, log_format, workers, policy, log_level):
    """Join the overlay and keep the node on it, in the foreground (systemd runs it)."""
    given = dict(relay=relay, token=token_, token_file=token_file, name=name, interface=interface,
                 state_dir=state_dir, port=port, log_level=log_level, accept_routes=accept_routes,
                 advertise_routes=list(advertise_routes) or None, snat_routes=snat_routes, pod_cidr=pod_cidr,
                 metrics=metrics, log_format=log_format, workers=workers, policy=policy)
    settings = _join_settings(given, config)
    if token_:
        click.echo("tunneld: warning: --token leaves the token in the process list for every local user; "
                   "use --token-file FILE or the TUNNELD_TOKEN environment variable", err=True)
    logs.setup(settings.log_level, settings.log_format)
    from .net.base import run
    from .net.noded import NodeDaemon
    # a reload rereads everything but the token, which was for the first join (its file may be gone)
    return _finish(run(NodeDaemon(settings, lambda: _join_settings(given, config, settings.token_text)).run()))


def _join_settings(given: dict, config: str | None, token: str | None = None) -> JoinSettings:
    """The command line's settings over the config file's, checked; again on every reload,
    with the token the node started with (token)."""
    s = merged(given, config,
               {"relay": None, "token": None, "token_file": None, "name": None, "interface": DEFAULT_INTERFACE,
                "state_dir": DEFAULT_STATE_DIR, "port": 0, "log_level": "info", "advertise_routes": [],
                "accept_routes": False, "snat_routes": True, "pod_cidr": "", "metrics": None, "log_format": "text",
                "workers": _cores(), "policy": None})
    if not s["relay"]:
        raise ConfigError("join needs --relay HOST:PORT, the relay's public address")
    relays = _relays(s["relay"])
    host, rport = relays[0][0], relays[0][2]
    if token is not None:
        s["token"], s["token_file"] = token, None
    if not s["token"] and not s["token_file"] and os.environ.get("TUNNELD_TOKEN"):
        s["token"] = os.environ["TUNNELD_TOKEN"]
    if bool(s["token"]) == bool(s["token_file"]):
        raise ConfigError("join needs exactly one of --token TOKEN, --token-file FILE or TUNNELD_TOKEN")
    text = s["token"]
    if s["token_file"]:
        try:
            with open(s["token_file"]) as f:
                text = f.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read --token-file {s['token_file']}: {exc.strerror}") from None
    node_name = (s["name"] or socket.gethostname()).strip().lower()
    from .control.registry import valid_name
    if not valid_name(node_name):
        raise ConfigError(f"node name {node_name!r} is not a lower-case DNS name; set one with --name")
    from .host.tun import check_interface_name
    lport = s["port"]
    if not isinstance(lport, int) or not 0 <= lport < 65536:
        raise ConfigError(f"--port {lport!r} must be 0-65535")
    for flag in ("accept_routes", "snat_routes"):
        if not isinstance(s[flag], bool):
            raise ConfigError(f"{flag.replace('_', '-')} takes true or false")
    routes = parse_routes(s["advertise_routes"])
    if routes and s["snat_routes"]:
        from .host.nat import check_available
        check_available()
    pods = _pod_cidr(s["pod_cidr"], routes)
    _check_workers(s["workers"])
    settings = JoinSettings(host, relays[0][1], rport, text, node_name,
                            check_interface_name(s["interface"]), s["state_dir"], lport,
                            check_log_level(s["log_level"]), routes, s["accept_routes"] or bool(pods),
                            s["snat_routes"], tuple(dict.fromkeys(endpoint.format((ip, p)) for _, ip, p in relays)),
                            pods,
                            s["workers"], _metrics(s["metrics"]), _log_format(s["log_format"]),
                            _policy(s["policy"]))
    from .proto.token import JoinToken, TokenError
    try:
        JoinToken.parse(text)
    except TokenError as exc:
        raise ConfigError(str(exc)) from None
    return settings


def _status(state_dir: str) -> dict:
    """The running daemon's status through its control socket (status, metrics, doctor)."""
    from .net.ctlsock import request
    st = request(os.path.join(os.path.abspath(state_dir), SOCKET_FILE), {"cmd": "status"})
    if "error" in st:
        raise TunneldError(f"the daemon answered: {st['error']}")
    return st


@cli.command()
@click.option("--state-dir", metavar="DIR", default=DEFAULT_STATE_DIR, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for scripts.")
def status(state_dir, as_json):
    """Ask the running daemon (node or relay) how it is."""
    st = _status(state_dir)
    if as_json:
        click.echo(json.dumps(st, indent=1))
    else:
        click.echo(format_status(st))
    return 0


@cli.command()
@click.option("--state-dir", metavar="DIR", default=DEFAULT_STATE_DIR, show_default=True)
def metrics(state_dir):
    """Print the running daemon's Prometheus metrics once (for node-exporter's textfile
    collector: tunneld metrics > DIR/tunneld.prom.$$ && mv DIR/tunneld.prom.$$ DIR/tunneld.prom)."""
    from .metrics import render
    click.echo(render(_status(state_dir)).decode(), nl=False)
    return 0


@cli.command()
@click.option("--state-dir", metavar="DIR", default=DEFAULT_STATE_DIR, show_default=True)
def doctor(state_dir):
    """Check this host for what keeps tunneld, kubelet and flannel from working, and say how
    to fix it: exit 0 when all is well, 1 when something is wrong."""
    from .doctor import check, render
    from .host.facts import gather
    status, error = None, None
    try:
        status = _status(state_dir)
    except TunneldError as exc:
        error = str(exc)
    facts = gather(status, (status or {}).get("interface") or DEFAULT_INTERFACE, os.path.abspath(state_dir))
    facts["error"] = error
    findings = check(facts)
    click.echo(render(findings))
    return 0 if all(f.ok for f in findings) else 1


@cli.command("kube-env")
@click.option("--state-dir", metavar="DIR", default=DEFAULT_STATE_DIR, show_default=True)
@click.option("--net-conf", "mode", metavar="vxlan|routed",
              help="Print kube-flannel's net-conf.json instead: flannel's VXLAN over tunneld0, or pod "
                   "CIDRs routed by tunneld itself (join --pod-cidr).")
@click.option("--cluster-cidr", metavar="CIDR", default="10.244.0.0/16", show_default=True,
              help="The cluster's pod network, for --net-conf.")
@click.option("--cluster-cidr6", metavar="CIDR", help="The cluster's IPv6 pod network, for a dual-stack --net-conf.")
def kube_env(state_dir, mode, cluster_cidr, cluster_cidr6):
    """Print what kubelet and flannel need on this node (shell / EnvironmentFile syntax)."""
    if mode is not None:
        from .kube import net_conf
        click.echo(net_conf(mode, cluster_cidr, cluster_cidr6), nl=False)
        return 0
    from .host.links import Links
    from .kube import kube_env as render, node_ip_problem
    from .net.ctlsock import request
    from .state import load_node_state
    state_dir = os.path.abspath(state_dir)
    path = os.path.join(state_dir, SOCKET_FILE)
    if os.path.exists(path):
        st = request(path, {"cmd": "status"})
        name, address, interface, mtu = st.get("name"), st.get("address"), st.get("interface"), st.get("mtu")
        address6 = st.get("address6")
    else:  # the daemon is down: what it last configured is still on the interface
        saved = load_node_state(state_dir)
        name, address, interface = (saved.assignment.name, saved.assignment.address, None) if saved else (None,) * 3
        mtu = saved.mtu if saved else None
        address6 = str(saved.assignment.address6.ip) if saved and saved.assignment.network6 else None
    if not address:
        raise TunneldError(f"this node has no overlay address yet (state dir {state_dir}); "
                           "start 'tunneld join' and let it reach the relay")
    with Links() as links:
        if interface is None:
            interface = next((i for i, addrs in links.all_addresses().items() if address in addrs), None)
        local = [a for addrs in links.all_addresses().values() for a in addrs]
    problem = node_ip_problem(address, local)
    if problem or interface is None:
        raise TunneldError(f"kubelet would refuse --node-ip={address}: {problem or 'it is on no interface'}; "
                           "is 'tunneld join' running?")
    if address6 and node_ip_problem(address6, local):  # not on tunneld0 (an MTU below 1280): IPv4 alone
        address6 = None
    click.echo(render(name, address, interface, mtu, address6), nl=False)
    return 0


def _relays(value) -> list[tuple[str, str, int]]:
    """--relay: (as given, address, port) for every address of every relay given, in order; a
    name's addresses in Happy Eyeballs' order (IPv6 first, the families taking turns), those
    this host has no route to left out."""
    from .control.eyeballs import order
    listed = value if isinstance(value, list) else str(value).split(",")
    relays, unroutable = [], []
    for text in (str(r).strip() for r in listed):
        rhost, rp = parse_hostport(text, "--relay")
        for ip, _ in order((ip, rp) for ip in resolve_all(rhost, "--relay")):
            (relays if routable(ip) else unroutable).append((rhost, ip, rp))
    if not relays:
        if unroutable:
            raise ConfigError(f"no route from this host to the relay at {', '.join(ip for _, ip, _ in unroutable)}; "
                              "check the host's network (IPv4 and IPv6)")
        raise ConfigError("join needs --relay HOST:PORT, the relay's public address")
    return relays


def _pod_cidr(value, routes: tuple[str, ...]) -> str:
    """--pod-cidr: a prefix (checked as an advertised route), or the absolute path of flannel's subnet.env."""
    text = str(value or "").strip()
    if not text or text.startswith("/"):
        return text
    if "," in text:
        raise ConfigError(f"--pod-cidr {text[:40]!r}: give one prefix, or the path of flannel's subnet.env")
    try:
        (prefix,) = parse_routes(text)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("--advertise-routes", "--pod-cidr")) from None
    if prefix in routes:
        raise ConfigError(f"--pod-cidr {prefix} is also in --advertise-routes; give it once")
    return prefix


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _ms(v) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def format_status(st: dict) -> str:
    lines = []
    if st.get("role") == "relay":
        six = f" and {st['network6']}" if st.get("network6") else ""
        lines.append(f"relay on {st['listen']}, network {st['network']}{six}, overlay MTU {st['mtu']}")
        lines.append(f"{'NODE':<20} {'ADDRESS':<15} {'CONNECTED':<9}  {'ENDPOINT':<21} ROUTES")
        for n in st["nodes"]:
            lines.append(f"{n['name']:<20} {n['address']:<15} {'yes' if n['connected'] else 'no':<9}  "
                         f"{n['endpoint'] or '-':<21} {', '.join(n['routes']) or '-'}")
    else:
        r = st["relay"]
        workers = len(st.get("workers") or ()) or 1
        six = f" {st['address6']}" if st.get("address6") else ""
        lines.append(f"node {st['name']} {st['address'] or '(no address yet)'}{six} on {st['interface']}, "
                     f"MTU {st['mtu']}" + (f", {workers} workers" if workers > 1 else ""))
        lines.append(f"relay {r['endpoint']} {'connected' if r['connected'] else 'NOT connected'} "
                     f"over {r['transport'].upper()}, rtt {_ms(r['rtt_ms'])}")
        lines.append(f"{'PEER':<20} {'ADDRESS':<15} {'PATH':<6} {'ENDPOINT':<21} {'MTU':>5} {'RTT':>9} "
                     f"{'RX':>9} {'TX':>9}")
        for p in st["peers"]:
            lines.append(f"{p['name']:<20} {p['address']:<15} {p['path']:<6} {p['endpoint']:<21} "
                         f"{p['mtu'] or '-':>5} {_ms(p['rtt_ms']):>9} {_size(p['rx_bytes']):>9} "
                         f"{_size(p['tx_bytes']):>9}")
        if st.get("accepted_routes") or st.get("advertised_routes"):
            lines.append(f"routes: advertised {', '.join(st['advertised_routes']) or 'none'}; "
                         f"accepted {', '.join(st['accepted_routes']) or 'none'}")
        pol = st.get("policy")
        if pol:
            lines.append(f"policy {pol['file']}: " + "; ".join(
                f"rule {r['rule']} {r['packets']}" + (f" (no peer {', '.join(r['waiting_for'])})" if r["waiting_for"]
                                                      else "") for r in pol["rules"]) + f"; denied {pol['denied_packets']}")
            for d in pol["denied"][:5]:
                lines.append(f"  denied {d['packets']} from {d['from'] or d['source']} {d['proto']}"
                             + (f"/{d['port']}" if d["port"] is not None else ""))
    for p in st.get("published") or ():  # on the relay: 'tunneld publish list' has more
        where = f"{p['node']}:{p['port']} on {p['protocol']}/{p['remote_port']}" if "node" in p else \
            f"{p['protocol']}/{p['port']}" + (f" via {p['relay']}" if p.get("relay") else "")
        lines.append(f"published {p['name']} ({where}): {p['connections'] + p['flows']} connections, "
                     f"in {_size(p['bytes_in'])}, out {_size(p['bytes_out'])}, {p['errors']} errors")
    drops = st.get("drops") or {}
    if drops:
        lines.append("dropped: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
    return "\n".join(lines)


for command in (lock_group, token, revoke, routes, publish, import_frpc):
    cli.add_command(command)


def main(argv=None) -> None:
    try:
        code = cli.main(args=argv, prog_name="tunneld", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.UsageError as exc:
        where = f"tunneld {exc.ctx.info_name}" if exc.ctx and exc.ctx.parent else "tunneld"
        where = where.replace("tunneld tunneld", "tunneld")
        click.echo(f"tunneld: {exc.format_message()} (see '{where} --help')", err=True)
        code = EXIT_USAGE
    except click.Abort:
        code = 1
    except TunneldError as exc:
        click.echo(f"tunneld: {exc}", err=True)
        code = exc.exit_code
    sys.exit(code if isinstance(code, int) else 0)
