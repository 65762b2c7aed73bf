"""Files in the state dir: the static key (mode 0600), the node's last assignment.

  <state-dir>/private.key   base64 of the X25519 private key, made on first start
  <state-dir>/node.json     node: the relay key and the address it assigned, so that a
                            restarted node brings tunneld0 up before the relay answers
  <state-dir>/relay.db      relay: the SQLite store
  <state-dir>/tunneld.sock  the control socket of the running daemon
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import stat

from .errors import ConfigError
from .proto.handshake import Identity
from .proto.noise import KeyPair

KEY_FILE = "private.key"
NODE_FILE = "node.json"
SOCKET_FILE = "tunneld.sock"
DB_FILE = "relay.db"


def prepare_dir(path: str) -> str:
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"state dir {path} is not a directory; choose another --state-dir")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create state dir {path}: {exc.strerror}; "
                          "choose another --state-dir or fix its permissions") from None
    if not os.path.isdir(path):
        raise ConfigError(f"state dir {path} is not a directory; choose another --state-dir")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(f"state dir {path} is not writable by this user; "
                          "run as root or fix its permissions")
    return path


def load_identity(state_dir: str, create: bool = True) -> Identity:
    path = os.path.join(state_dir, KEY_FILE)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not create:
            raise ConfigError(f"no key in {state_dir}: is this the relay's --state-dir?") from None
        keypair = KeyPair.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(keypair.private_bytes()).decode() + "\n")
        return Identity(keypair)
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(f"{path} is readable by other users; run 'chmod 600 {path}'")
    try:
        with open(path) as f:
            raw = base64.b64decode(f.read().strip(), validate=True)
    except (OSError, binascii.Error, ValueError) as exc:
        raise ConfigError(f"cannot read the key {path} ({exc}); restore it, or delete it "
                          "to make a new identity (the relay will see a new node)") from None
    if len(raw) != 32:
        raise ConfigError(f"{path} does not hold a 32-byte key; restore it, or delete it "
                          "to make a new identity (the relay will see a new node)")
    return Identity(KeyPair.from_private_bytes(raw))


def load_node_cache(state_dir: str) -> dict | None:
    try:
        with open(os.path.join(state_dir, NODE_FILE)) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save_node_cache(state_dir: str, data: dict) -> None:
    path = os.path.join(state_dir, NODE_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
