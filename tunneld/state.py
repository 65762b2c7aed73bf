"""Files in the state dir: the static key (mode 0600), the node's last assignment.

  <state-dir>/private.key   base64 of the X25519 private key, made on first start
  <state-dir>/node.json     node: the relay key and the address it assigned, so that a
                            restarted node brings tunneld0 up before the relay answers
                            {"relay_key": hex, "relay": "host:port", "name", "address",
                             "network", "mtu": int}
  <state-dir>/relay.db      relay: the SQLite store
  <state-dir>/tunneld.sock  the control socket of the running daemon
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import os
import stat
from dataclasses import dataclass

from .control import overlay6
from .engine.effects import Assignment
from .errors import ConfigError
from .proto.handshake import Identity
from .proto.noise import KeyPair
from .proto.wire import MIN_OVERLAY_MTU

log = logging.getLogger("tunneld.state")

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
    st = os.stat(path)
    if stat.S_IMODE(st.st_mode) & 0o077:
        # It holds keys, token hashes and the registry: nobody else may list or read it.
        if st.st_uid != os.geteuid():
            raise ConfigError(f"state dir {path} is open to other users and owned by another; "
                              f"run 'chmod 700 {path}' as its owner")
        os.chmod(path, 0o700)
        log.warning("state dir %s was open to other users (mode %o); made it 0700", path, stat.S_IMODE(st.st_mode))
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


@dataclass(frozen=True)
class NodeState:
    """What a node remembers between runs (node.json)."""
    relay_key: str  # hex
    assignment: Assignment
    mtu: int | None  # tunneld0's, as last set; None when the file holds no usable one
    lock: bytes | None = None  # the network lock pinned at an endorsed join
    known: tuple = ()  # ((peer name, key), ...) as last accepted


def parse_node_state(data) -> NodeState | None:
    """node.json's content, checked field by field; None for anything that is not whole."""
    if not isinstance(data, dict):
        return None
    name, address, network, key = data.get("name"), data.get("address"), data.get("network"), data.get("relay_key")
    if not all(isinstance(v, str) and 0 < len(v) <= 64 for v in (name, address, network, key)):
        return None
    try:
        if ipaddress.IPv4Address(address) not in ipaddress.IPv4Network(network):
            return None
    except ValueError:
        return None
    mtu = data.get("mtu")
    if type(mtu) is not int or not MIN_OVERLAY_MTU <= mtu <= 65535:
        mtu = None
    lock, peers = _hex(data.get("lock")), data.get("peers")
    if data.get("lock") is not None and lock is None:
        return None  # a pin we cannot read must not silently become no pin
    known = tuple((n, k) for n, k in ((n, _hex(v)) for n, v in (peers.items() if isinstance(peers, dict) else ()))
                  if isinstance(n, str) and k is not None)
    return NodeState(key, Assignment(name, address, network, overlay6.usable(data.get("network6"))), mtu, lock, known)



def _hex(value) -> bytes | None:
    """32 bytes from 64 hex digits, or None."""
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        return None
    return raw if len(raw) == 32 else None


def load_node_state(state_dir: str, relay_key: bytes | None = None) -> NodeState | None:
    """The node's remembered assignment (from this relay, when relay_key is given), or None."""
    try:
        with open(os.path.join(state_dir, NODE_FILE)) as f:
            state = parse_node_state(json.load(f))
    except (OSError, ValueError):
        return None
    if state is None or (relay_key is not None and state.relay_key != relay_key.hex()):
        return None
    return state


def save_node_state(state_dir: str, relay_key: bytes, relay: str, assignment: Assignment, mtu: int,
                    lock: bytes | None = None, known: tuple = ()) -> None:
    path = os.path.join(state_dir, NODE_FILE)
    tmp = path + ".tmp"
    data = {"relay_key": relay_key.hex(), "relay": relay, "name": assignment.name, "address": assignment.address,
            "network": assignment.network, "network6": assignment.network6, "mtu": mtu, "lock": lock.hex() if lock else None,
            "peers": {name: key.hex() for name, key in known}}
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
