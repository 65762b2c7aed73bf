"""`tunneld lock`: the network lock's key, kept by the operator away from the relay.

  tunneld lock init --out FILE        a new lock key in FILE (0600); its public key alone on
                                      the last line of stdout, for `serve --lock`
  tunneld lock endorse TOKEN --key F  the token, endorsed: a node that joins with it pins the
                                      lock and proves its own key to every peer
"""

from __future__ import annotations

import base64
import binascii
import os

import click

from .errors import ConfigError
from .proto import lock
from .proto.token import Endorsement, JoinToken, TokenError

_KEY_HEADER = "tunneld network lock key"


def _read_key(path: str) -> bytes:
    try:
        st = os.stat(path)
        with open(path) as f:
            header, _, body = f.read().strip().partition("\n")
    except OSError as exc:
        raise ConfigError(f"cannot read the lock key {path}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise ConfigError(f"{path} is readable by other users; run 'chmod 600 {path}'")
    try:
        seed = base64.b64decode(body.strip(), validate=True)
    except (binascii.Error, ValueError):
        seed = b""
    if header != _KEY_HEADER or len(seed) != 32:
        raise ConfigError(f"{path} is not a lock key made by 'tunneld lock init'")
    return seed


@click.group("lock")
def lock_group():
    """The network lock: an operator key, never on the relay, that endorses node keys."""


@lock_group.command("init")
@click.option("--out", "out", metavar="FILE", required=True, help="Where to write the new lock key (0600).")
def init(out):
    """Make a lock key; print its public key alone on the last line."""
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{out} exists; a lock key is never overwritten (choose another --out)") from None
    except OSError as exc:
        raise ConfigError(f"cannot create {out}: {exc.strerror}") from None
    seed = os.urandom(32)
    with os.fdopen(fd, "w") as f:
        f.write(f"{_KEY_HEADER}\n{base64.b64encode(seed).decode()}\n")
    click.echo(f"# the lock key is in {out}: keep it off the relay, and back it up", err=True)
    click.echo(lock.format_public(lock.public_of(seed)))
    return 0


@lock_group.command("endorse")
@click.argument("token")
@click.option("--key", "key", metavar="FILE", required=True, help="The lock key from 'tunneld lock init'.")
def endorse(token, key):
    """Print TOKEN endorsed by the lock key, alone on stdout ('-': read TOKEN from stdin, so that
    it stays out of the process list)."""
    if token == "-":
        token = click.get_text_stream("stdin").readline()
    try:
        parsed = JoinToken.parse(token)
    except TokenError as exc:
        raise ConfigError(str(exc)) from None
    seed = _read_key(key)
    enroll_seed = os.urandom(32)
    lock_public, sig1 = lock.endorse(seed, parsed.token_id, enroll_seed)
    endorsed = JoinToken(parsed.relay_public, parsed.token_id, parsed.secret,
                         Endorsement(lock_public, enroll_seed, sig1))
    click.echo(endorsed.encode())
    return 0
