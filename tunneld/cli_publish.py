"""`tunneld publish` (run on the relay) and `tunneld import-frpc`.

publish add/remove change the running relay at once, over its control socket; what they
add is kept in the relay's state dir for its next start. Services in the config file's
[[publish]] tables change with the file (and a reload).
"""

from __future__ import annotations

import json
import os
import sys

import click

from .cli_relay import _relay_dir, relay_state_dir
from .errors import ConfigError


def _ask(state_dir: str, req: dict) -> dict:
    from .net.ctlsock import request, running
    from .state import SOCKET_FILE
    path = os.path.join(_relay_dir(state_dir), SOCKET_FILE)
    if not running(path):
        raise ConfigError(f"no relay runs on {state_dir}: publishing changes a running relay; start "
                          "'tunneld serve' first (or put [[publish]] in its config file)")
    answer = request(path, req, timeout=40.0)
    if "error" in answer:
        if answer["error"].startswith("unknown command"):
            raise ConfigError("the relay running there is older than 0.5 and publishes nothing; upgrade it")
        raise ConfigError(answer["error"])
    return answer


@click.group()
def publish():
    """Publish nodes' ports on the relay's address (run on the relay)."""


@publish.command("add")
@click.argument("name")
@click.argument("target", metavar="NODE:PORT")
@click.option("--remote-port", metavar="N", type=int, required=True, help="The port on the relay's address.")
@click.option("--udp", is_flag=True, help="A UDP service (TCP without it).")
@click.option("--proxy-protocol", type=click.Choice(["2"]), help="Send the client's address first, as PROXY v2.")
@click.option("--max-connections", metavar="N", type=int, help="Connections (UDP: flows) at once [1024].")
@click.option("--idle-timeout", metavar="SECONDS", type=float, help="UDP: a flow ends this long idle [60].")
@relay_state_dir
def publish_add(name, target, remote_port, udp, proxy_protocol, max_connections, idle_timeout, state_dir):
    """Carry the relay's --remote-port to port PORT of node NODE, at once."""
    node, sep, port = target.rpartition(":")
    if not sep or not node or not port.isdigit():
        raise ConfigError(f"{target[:60]!r}: give NODE:PORT, e.g. edge-1:8080")
    table = {"name": name, "node": node, "port": int(port), "remote-port": remote_port,
             "protocol": "udp" if udp else "tcp"}
    for key, value in (("proxy-protocol", proxy_protocol and int(proxy_protocol)),
                       ("max-connections", max_connections), ("idle-timeout", idle_timeout)):
        if value is not None:
            table[key] = value
    _ask(state_dir, {"cmd": "publish-add", "publish": table})
    click.echo(f"published {name}: {table['protocol']} port {remote_port} to {node}:{port}", err=True)
    return 0


@publish.command("remove")
@click.argument("name")
@relay_state_dir
def publish_remove(name, state_dir):
    """Stop publishing NAME: its port closes, and its connections with it."""
    _ask(state_dir, {"cmd": "publish-remove", "name": name})
    click.echo(f"stopped publishing {name}", err=True)
    return 0


@publish.command("list")
@relay_state_dir
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def publish_list(state_dir, as_json):
    """What the relay publishes, and what went through each."""
    rows = _ask(state_dir, {"cmd": "status"}).get("published", [])
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return 0
    click.echo(f"{'NAME':<16} {'PORT':<10} {'TO':<28} {'NODE UP':<8} {'ACTIVE':>6} {'TOTAL':>7} {'IN':>10} "
               f"{'OUT':>10} {'ERRORS':>6} FROM")
    for r in rows:
        total = r["connections"] if r["protocol"] == "tcp" else r["flows"]
        click.echo(f"{r['name']:<16} {r['protocol'] + '/' + str(r['remote_port']):<10} "
                   f"{r['node'] + ':' + str(r['port']):<28} {'yes' if r['node_connected'] else 'no':<8} "
                   f"{r['active']:>6} {total:>7} {r['bytes_in']:>10} {r['bytes_out']:>10} {r['errors']:>6} {r['from']}")
    return 0


@click.command("import-frpc")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--node", metavar="NAME", help="The node that takes this frpc's place [node-1].")
def import_frpc(file, node):
    """Print the tunneld settings that replace a frpc.toml (or frpc.ini)."""
    from .frpc import FrpcError, convert
    from .proto.messages import valid_name
    name = node or "node-1"
    if not valid_name(name):
        raise ConfigError(f"--node {name[:60]!r}: a node name is lower-case letters, digits, - and .")
    try:
        with open(file, "rb") as f:
            raw = f.read(1 << 20)
        text = raw.decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file} is not UTF-8 text") from None
    try:
        conversion = convert(text, file, name)
    except FrpcError as exc:
        raise ConfigError(str(exc)) from None
    sys.stdout.write(conversion.render(file, name))
    return 0
