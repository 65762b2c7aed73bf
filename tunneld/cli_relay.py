"""The commands run on the relay's host: `tunneld token`, `tunneld revoke`, `tunneld routes`.

Each asks the running relay over its control socket, which decides from memory and
answers once the change is stored; with no relay running, it opens the store itself. It
refuses a state dir that holds no relay, rather than make a new relay there.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import time

import click

from .config import DEFAULT_NETWORK, DEFAULT_STATE_DIR, parse_duration, parse_network
from .errors import ConfigError
from .state import DB_FILE, KEY_FILE, SOCKET_FILE, load_identity, prepare_dir


def _open_store(state_dir: str):
    from .store.base import StoreError
    from .store.sqlite import SqliteStore
    if not os.path.isfile(os.path.join(state_dir, DB_FILE)):  # a relay that keeps its state in etcd
        raise ConfigError(f"no relay runs on {state_dir}, and its state is in etcd, not here: run the "
                          "command on a host where a relay of the network runs")
    try:
        return SqliteStore(os.path.join(state_dir, DB_FILE))
    except StoreError as exc:
        raise ConfigError(str(exc)) from None


relay_state_dir = click.option("--state-dir", metavar="DIR", default=DEFAULT_STATE_DIR, show_default=True,
                               help="The relay's state dir.")


def _relay_dir(state_dir: str) -> str:
    """state_dir, if a relay has run there (its key and its database): the relay commands
    must not make a new relay key in a mistyped or fresh directory, and hand out tokens for a
    relay that does not exist."""
    path = os.path.abspath(state_dir)
    # relay.db, or (a relay on etcd) the socket of the relay running there
    if not os.path.isfile(os.path.join(path, KEY_FILE)) or not any(
            os.path.exists(os.path.join(path, f)) for f in (DB_FILE, SOCKET_FILE)):
        raise ConfigError(f"no relay in {path} (no {KEY_FILE} and {DB_FILE}): start 'tunneld serve' "
                          "there first, or give the relay's --state-dir")
    return prepare_dir(path)


def _offline_registry(state_dir: str):
    """The store and a registry read from it, for when no relay runs on this state dir."""
    from .control.registry import Registry
    store = _open_store(state_dir)
    snapshot = asyncio.run(store.load())
    from .control.overlay6 import usable
    network6 = usable(snapshot.meta.get("network6"))
    return store, Registry(parse_network(snapshot.meta.get("network") or DEFAULT_NETWORK), snapshot,
                           network6=ipaddress.IPv6Network(network6) if network6 else None)


def _offline_change(state_dir: str, change, missing: str) -> None:
    """With no relay running: one change, decided by a registry read from the store, written
    to it; ConfigError(missing) when change() finds nothing to change."""
    store, registry = _offline_registry(state_dir)
    try:
        write = change(registry)
        if write is None:
            raise ConfigError(missing)
        asyncio.run(write.apply(store))
    finally:
        store.close_now()


def _relay_request(state_dir: str, req: dict) -> dict | None:
    """Ask the relay running on this state dir, if one does. None if none runs, or if it is a
    release that does not know the command (0.1.0 read its store at every join, so writing
    the store ourselves is what it expects)."""
    from .net.ctlsock import request, running
    path = os.path.join(state_dir, SOCKET_FILE)
    if not running(path):
        return None
    answer = request(path, req, timeout=40.0)
    if "error" in answer:
        if answer["error"].startswith("unknown command"):
            return None
        raise ConfigError(answer["error"])
    return answer


@click.command()
@relay_state_dir
@click.option("--ttl", metavar="DURATION", default="24h", show_default=True,
              help="Lifetime, e.g. 30m, 24h, 7d; 0 for a token that never expires.")
@click.option("--list", "list_", is_flag=True, help="List the tokens instead of making one.")
@click.option("--revoke", metavar="ID", help="Revoke the token with this ID (from --list).")
@click.option("--uses", metavar="N", type=click.IntRange(min=0), default=1, show_default=True,
              help="How many nodes it admits; 0 for any number until it expires.")
def token(state_dir, ttl, list_, revoke, uses):
    """Print a new join token, alone on stdout (run on the relay)."""
    if list_ and revoke:
        raise ConfigError("use --list or --revoke, not both")
    seconds = parse_duration(ttl)
    state_dir = _relay_dir(state_dir)
    if revoke:
        try:
            bytes.fromhex(revoke)
        except ValueError:
            raise ConfigError(f"--revoke {revoke!r} is not a token ID; see 'tunneld token --list'") from None
    # A running relay decides from memory: ask it. Without one, the store is ours alone.
    if list_:
        answer = _relay_request(state_dir, {"cmd": "tokens"})
        if answer is None:
            store, registry = _offline_registry(state_dir)
            store.close_now()
            tokens = registry.token_rows()
        else:
            tokens = answer["tokens"]
        _print_tokens(tokens)
        return 0
    if revoke:
        if _relay_request(state_dir, {"cmd": "revoke-token", "id": revoke}) is None:
            _offline_change(state_dir, lambda registry: registry.revoke_token(bytes.fromhex(revoke)),
                            f"no valid token with ID {revoke}; see 'tunneld token --list'")
        click.echo(f"revoked token {revoke}", err=True)
        return 0
    answer = _relay_request(state_dir, {"cmd": "token", "ttl": seconds, "uses": uses})
    if answer is not None:
        click.echo(answer["token"])
        return 0
    identity = load_identity(state_dir, create=False)
    store, registry = _offline_registry(state_dir)
    try:
        token, write = registry.issue_token(identity.public, seconds, time.time(), os.urandom, uses)
        asyncio.run(write.apply(store))
    finally:
        store.close_now()
    click.echo(token.encode())
    return 0


def _print_tokens(tokens: list[dict]) -> None:
    now = time.time()
    click.echo(f"{'ID':<17} {'CREATED':<20} {'EXPIRES':<20} {'USES':>4}  STATE")
    for t in tokens:
        expires = "never" if t["expires"] is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t["expires"]))
        state = "revoked" if t["revoked"] else ("expired" if t["expires"] is not None and t["expires"] <= now
                                                else "used" if t.get("max_uses") and t["uses"] >= t["max_uses"]
                                                else "valid")
        uses = f"{t['uses']}/{t['max_uses']}" if t.get("max_uses") else f"{t['uses']}/any"
        click.echo(f"{t['id']:<17} {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(t['created'])):<20} "
                   f"{expires:<20} {uses:>6}  {state}")


@click.command()
@click.argument("name")
@relay_state_dir
def revoke(name, state_dir):
    """Revoke a node's key (run on the relay): it is disconnected and refused from now on."""
    state_dir = _relay_dir(state_dir)
    if _relay_request(state_dir, {"cmd": "revoke", "name": name}) is None:
        _offline_change(state_dir, lambda registry: registry.revoke(name, time.time())[1],
                        f"no node named {name!r} with a key on this relay; see 'tunneld status'")
    click.echo(f"revoked {name}; its name and address are free for a new key", err=True)
    return 0


@click.group()
def routes():
    """Which advertised routes take effect (run on the relay)."""


def _route_change(state_dir: str, cmd: str, name: str, prefix: str, change) -> None:
    state_dir = _relay_dir(state_dir)
    if _relay_request(state_dir, {"cmd": cmd, "name": name, "prefix": prefix}) is None:
        from .control.approvals import ApprovalError
        try:
            _offline_change(state_dir, change, f"{prefix} is not approved for {name!r}; see 'tunneld routes list'")
        except ApprovalError as exc:
            raise ConfigError(str(exc)) from None


@routes.command("approve")
@click.argument("name")
@click.argument("prefix")
@relay_state_dir
def routes_approve(name, prefix, state_dir):
    """Let NAME's advertised PREFIX (or any prefix inside it) take effect on the nodes."""
    def change(registry):
        listen = registry.meta.get("listen")  # the relay's address, as it last recorded it
        return registry.approve_route(name, prefix, [listen] if listen else [])
    _route_change(state_dir, "approve-route", name, prefix, change)
    click.echo(f"approved {prefix} for {name}", err=True)
    return 0


@routes.command("unapprove")
@click.argument("name")
@click.argument("prefix")
@relay_state_dir
def routes_unapprove(name, prefix, state_dir):
    """Take an approval back: the prefix stops working on the nodes at once."""
    _route_change(state_dir, "unapprove-route", name, prefix, lambda registry: registry.approvals.unapprove(name, prefix))
    click.echo(f"{prefix} is no longer approved for {name}", err=True)
    return 0


@routes.command("list")
@relay_state_dir
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def routes_list(state_dir, as_json):
    """Advertised and approved routes, per node."""
    state_dir = _relay_dir(state_dir)
    answer = _relay_request(state_dir, {"cmd": "routes"})
    if answer is None:  # no relay running: approvals only (what nodes advertise, only a relay knows)
        store, registry = _offline_registry(state_dir)
        store.close_now()
        rows = registry.approvals.rows({})
    else:
        rows = answer["routes"]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return 0
    click.echo(f"{'NODE':<24} {'ADVERTISED':<32} {'APPROVED':<32} IN EFFECT")
    for r in rows:
        click.echo(f"{r['name']:<24} {','.join(r['advertised']) or '-':<32} {','.join(r['approved']) or '-':<32} "
                   f"{','.join(r['effective']) or '-'}")
    return 0
