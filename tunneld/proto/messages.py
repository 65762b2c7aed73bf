"""Control messages between a node and the relay, and handshake payloads: msgpack maps,
always encrypted.

Handshake payloads (inside the Noise messages of the node <-> relay handshake):

  join request  {"ts": bin12 TAI64N, "name": str, "token": bin24 | nil, "mtu": int,
                 "routes": [str CIDR, ...], "lan": [str endpoint, ...], HELLO,
                 ["chain": bin168]}             chain (0.3.0): the node's network-lock chain
                                                mtu: the node's underlay MTU towards the relay;
                                                routes: prefixes it offers to route for others;
                                                lan: its LAN endpoints, for direct paths
  join reply    {"ok": true, "name": str, "address": str, "network": str, "endpoint": str,
                 "mtu": int, "relay_mtu": int, HELLO, ["network6": str]}
                                                mtu: the overlay MTU every tunneld0 should use;
                                                network6 (0.6 on): the IPv6 overlay prefix
                {"ok": false, "code": str, "error": str, "retry": bool, HELLO}

  HELLO: "pv": int, "pm": int, "caps": [str, ...]   (version.py; absent from 0.1.0, which
         speaks protocol 1; a decoder takes a message with or without them)

Handshake payloads of the node <-> node handshake:

  INIT          bin12 TAI64N timestamp, then (to a peer that announced "hello") a msgpack
                map {HELLO}
  RESP          empty (0.1.0), or a msgpack map {HELLO}

Messages on an established node <-> relay session (one per DATA plaintext):

  ping   node -> relay  {"t": "ping", "n": int, "v": int | nil, ["proof": bin8]}
                                                v: directory version held
  pong   relay -> node  {"t": "pong", "n": int, "ep": str, ["proof": bin8], ["now": int]}
                                                ep: the node's address as seen; now (0.4 on):
                                                the relay's clock, ms since the epoch
         proof (since 0.3.0, to nodes that announce "ep-proof"): the relay saw the node at a
         new address ep and sent this pong there; the node echoes proof in a ping at once,
         and only then does the relay move the node's endpoint to ep.
  dir    relay -> node  {"t": "dir", "v": int, "base": int | nil, "i": int, "c": int, "mtu": int,
                         "nodes": [[name, addr bin4, key bin32, online bool, endpoint str,
                                    mtu int, routes [str CIDR, ...], lan [str, ...]], ...],
                         "gone": [addr bin4, ...],
                         "hellos": [[pv int, pm int, [cap str, ...]], ...]}
         base nil: chunk i of c of a full snapshot at version v; else a delta from base to v.
         hellos (since 0.2.0, absent before): what each of "nodes" announced, in order.
         locks (since 0.3.0, absent before): each of "nodes"' network-lock chain, or empty.
         routes6 (since 0.6.0, only when a node has any): each of "nodes"' IPv6 prefixes; the
         entry's own routes list holds its IPv4 ones alone, all an older node can read.
         relays (since 0.4.0, only when several relays serve the network): ["host:port", ...],
         every live relay, the sender first; a node fails over to them.
  bye    node -> relay  {"t": "bye"}                               the node is shutting down
  revoked relay -> node {"t": "revoked"}                           the operator revoked this node

Publishing (0.5 on, only to and from nodes that announce "publish"; engine/publish_*.py):
  pub    relay -> node  {"t": "pub", "s": [[name, "tcp"|"udp", port, idle s], ...]}
                                                the node's ports the relay publishes: the node
                                                serves these and nothing else
  open   relay -> node  {"t": "open", "id": int, "port": int, "k": bin32, "src": str,
                         "dst": str, "pp": 0|2, "s": str}  a client came to published TCP
                                                service s: open a work connection
                                                (proto/stream.py) proving k
  shut   node -> relay  {"t": "shut", "id": int}   the service refused that connection
  udp    both ways      {"t": "udp", "f": int, "p": int, "d": bin}   a datagram of UDP flow f
                                                (p: the node's port; 0 from the node)
  A relay that is not the node's home reaches it through the home (proto/mesh.py) and
  says so: "r": "host:port" in pub and udp, "at": "host:port" in open (the work
  connection goes there). The node's answers go to its home, which passes them back.

decode() validates the shape of every message: a peer is authenticated, not trusted.
Anything else raises ProtocolError.
"""

from __future__ import annotations

import re

import msgpack

from .errors import ProtocolError
from .lock import CHAIN_LEN
from .version import LEGACY, MAX_CAP_LEN, MAX_CAPS, Hello

MAX_NAME = 253
MAX_ENDPOINT = 64
MAX_ERROR = 400
MAX_NODES_PER_CHUNK = 64
MAX_ROUTES = 16
MAX_CIDR = 43  # "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128" (before 0.6: 18, IPv4's longest)
MAX_LAN = 8
MAX_RELAYS = 16  # relays of one network a directory lists
MAX_MESSAGE = 16384
MAX_DATAGRAM = 8192  # a published UDP service's datagram, carried in a control message
MAX_PUBLISHED = 256  # services of one node the relay may publish
_MAX_INT = 2**63 - 1

_NONE = type(None)
_NAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")


def valid_name(name) -> bool:
    """A Kubernetes node name (a lower-case DNS subdomain). Names travel to every node and
    end up in kubelet's environment and in logs: a node checks them as the relay does."""
    return isinstance(name, str) and bool(_NAME.fullmatch(name)) and ".." not in name


def _unpack(data: bytes):
    if len(data) > MAX_MESSAGE:
        raise ProtocolError("control message too large")
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_str_len=MAX_MESSAGE, max_bin_len=MAX_MESSAGE,
            max_array_len=1024, max_map_len=32, max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types; all mean "malformed"
        raise ProtocolError(f"undecodable control message: {type(exc).__name__}") from None


def encode(msg: dict) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def _type_ok(value, kind) -> bool:
    if isinstance(value, bool):  # bool is an int to isinstance(); keep them apart
        return kind is bool or (isinstance(kind, tuple) and bool in kind)
    return isinstance(value, kind)


def _check(msg, fields: dict, what: str) -> dict:
    """Each field (kind, limit): ints 0..limit (any if 0), bytes of exactly limit (-1: 1 to
    MAX_DATAGRAM), str up to limit."""
    if not isinstance(msg, dict):
        raise ProtocolError(f"{what}: not a map")
    for key, (kind, limit) in fields.items():
        if key not in msg:
            raise ProtocolError(f"{what}: missing {key!r}")
        value = msg[key]
        if not _type_ok(value, kind):
            raise ProtocolError(f"{what}: {key!r} has the wrong type")
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            if not 0 <= value <= (limit or _MAX_INT):
                raise ProtocolError(f"{what}: {key!r} out of range")
        elif isinstance(value, bytes):
            if len(value) != limit and not (limit == -1 and 0 < len(value) <= MAX_DATAGRAM):
                raise ProtocolError(f"{what}: {key!r} has the wrong length")
        elif isinstance(value, str) and len(value) > limit:
            raise ProtocolError(f"{what}: {key!r} too long")
    return msg


_JOIN_REQUEST = {"ts": (bytes, 12), "name": (str, MAX_NAME), "token": ((bytes, _NONE), 24),
                 "mtu": (int, 65535), "routes": (list, 0), "lan": (list, 0)}
_JOIN_OK = {"ok": (bool, 0), "name": (str, MAX_NAME), "address": (str, 18), "network": (str, 18),
            "endpoint": (str, MAX_ENDPOINT), "mtu": (int, 65535), "relay_mtu": (int, 65535)}
_JOIN_REFUSED = {"ok": (bool, 0), "code": (str, 32), "error": (str, MAX_ERROR), "retry": (bool, 0)}
_CONTROL = {
    "ping": {"n": (int, 0), "v": ((int, _NONE), 0)},
    "pong": {"n": (int, 0), "ep": (str, MAX_ENDPOINT)},
    "dir": {"v": (int, 0), "base": ((int, _NONE), 0), "i": (int, 4096), "c": (int, 4096),
            "mtu": (int, 65535), "nodes": (list, 0), "gone": (list, 0)},
    "bye": {},
    "revoked": {},
    "pub": {"s": (list, 0)},
    "open": {"id": (int, 0), "port": (int, 65535), "k": (bytes, 32), "src": (str, MAX_ENDPOINT),
             "dst": (str, MAX_ENDPOINT), "pp": (int, 2), "s": (str, 63)},
    "shut": {"id": (int, 0)},
    "udp": {"f": (int, 0), "p": (int, 65535), "d": (bytes, -1)},
}


def _check_strings(items, most: int, longest: int, what: str) -> list:
    """Shape only (a few short strings); what they mean is checked where they are used."""
    if len(items) > most or not all(isinstance(r, str) and 0 < len(r) <= longest for r in items):
        raise ProtocolError(f"{what}: bad list")
    return items


def _hello(pv, pm, caps, what: str) -> Hello:
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536 for v in (pv, pm)) or pm > pv:
        raise ProtocolError(f"{what}: bad protocol versions")
    if not isinstance(caps, list):
        raise ProtocolError(f"{what}: bad capabilities")
    return Hello(pv, pm, frozenset(_check_strings(caps, MAX_CAPS, MAX_CAP_LEN, what)))


def hello_of(msg: dict, what: str) -> Hello:
    """The hello in a join request or reply; protocol 1 when it carries none (0.1.0)."""
    if "pv" not in msg:
        return LEGACY
    return _hello(msg.get("pv"), msg.get("pm"), msg.get("caps"), what)


def encode_hello(hello: Hello) -> bytes:
    return encode(hello.wire())


def decode_hello(data: bytes) -> Hello:
    """A node <-> node handshake's hello: empty (0.1.0) or a map with pv, pm and caps."""
    if not data:
        return LEGACY
    msg = _unpack(data)
    if not isinstance(msg, dict) or "pv" not in msg:
        raise ProtocolError("hello: not a map with a protocol version")
    return hello_of(msg, "hello")


def decode_join_request(data: bytes) -> dict:
    msg = _check(_unpack(data), _JOIN_REQUEST, "join request")
    _check_strings(msg["routes"], MAX_ROUTES, MAX_CIDR, "join request routes")
    _check_strings(msg["lan"], MAX_LAN, MAX_ENDPOINT, "join request lan")
    msg["hello"] = hello_of(msg, "join request")
    chain = msg.get("chain")
    if chain is not None and not (isinstance(chain, bytes) and len(chain) == CHAIN_LEN):
        raise ProtocolError("join request: bad chain")
    msg["chain"] = chain
    return msg


def decode_join_reply(data: bytes) -> dict:
    msg = _unpack(data)
    if not isinstance(msg, dict) or not isinstance(msg.get("ok"), bool):
        raise ProtocolError("join reply: no 'ok'")
    _check(msg, _JOIN_OK if msg["ok"] else _JOIN_REFUSED, "join reply")
    if msg["ok"] and not valid_name(msg["name"]):
        raise ProtocolError("join reply: the name is not a node name")
    if msg["ok"] and not isinstance(msg.setdefault("network6", None), (str, type(None))):
        raise ProtocolError("join reply: 'network6' has the wrong type")  # what it says: node.py checks
    msg["hello"] = hello_of(msg, "join reply")
    return msg


def _check_node(entry) -> tuple:
    if not isinstance(entry, list) or len(entry) != 8:
        raise ProtocolError("dir: a node entry is not an 8-list")
    name, addr, key, online, endpoint, mtu, routes, lan = entry
    if not valid_name(name):
        raise ProtocolError("dir: bad node name")
    if not (isinstance(addr, bytes) and len(addr) == 4):
        raise ProtocolError("dir: bad node address")
    if not (isinstance(key, bytes) and len(key) == 32):
        raise ProtocolError("dir: bad node key")
    if not isinstance(online, bool):
        raise ProtocolError("dir: bad online flag")
    if not (isinstance(endpoint, str) and len(endpoint) <= MAX_ENDPOINT):
        raise ProtocolError("dir: bad endpoint")
    if not (isinstance(mtu, int) and not isinstance(mtu, bool) and 0 <= mtu <= 65535):
        raise ProtocolError("dir: bad mtu")
    if not (isinstance(routes, list) and isinstance(lan, list)):
        raise ProtocolError("dir: bad routes or lan")
    return (name, addr, key, online, endpoint, mtu, tuple(_check_strings(routes, MAX_ROUTES, MAX_CIDR, "dir")),
            tuple(_check_strings(lan, MAX_LAN, MAX_ENDPOINT, "dir")))


def decode_control(data: bytes) -> dict:
    msg = _unpack(data)
    if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
        raise ProtocolError("control message without a type")
    fields = _CONTROL.get(msg["t"])
    if fields is None:
        raise ProtocolError(f"unknown control message {msg['t'][:20]!r}")
    _check(msg, fields, msg["t"])
    if "proof" in msg and (msg["t"] not in ("ping", "pong") or not isinstance(msg["proof"], bytes)
                           or len(msg["proof"]) != 8):
        raise ProtocolError(f"{msg['t']}: bad proof")
    if msg["t"] == "pub":
        msg["s"] = _check_published(msg["s"])
    for key in ("r", "at"):  # publishing through another relay: the relay that asks
        if key in msg and (msg["t"] not in ("pub", "udp", "open") or not isinstance(msg[key], str)
                           or not 0 < len(msg[key]) <= MAX_ENDPOINT):
            raise ProtocolError(f"{msg['t']}: bad {key!r}")
    if msg["t"] == "dir":
        if len(msg["nodes"]) > MAX_NODES_PER_CHUNK or msg["i"] >= msg["c"]:
            raise ProtocolError("dir: bad chunking")
        msg["nodes"] = [_check_node(e) for e in msg["nodes"]]
        gone = msg["gone"]
        if any(not (isinstance(a, bytes) and len(a) == 4) for a in gone):
            raise ProtocolError("dir: bad gone address")
        hellos = msg.get("hellos")
        if hellos is None:  # a 0.1.0 relay: nobody announced anything
            msg["hellos"] = [LEGACY] * len(msg["nodes"])
        elif not isinstance(hellos, list) or len(hellos) != len(msg["nodes"]):
            raise ProtocolError("dir: hellos do not match the nodes")
        else:
            msg["hellos"] = [_dir_hello(h) for h in hellos]
        relays = msg.get("relays")
        if relays is not None:
            if not isinstance(relays, list):
                raise ProtocolError("dir: relays is not a list")
            msg["relays"] = list(_check_strings(relays, MAX_RELAYS, MAX_ENDPOINT, "dir relays"))
        routes6 = msg.get("routes6")  # each node's IPv6 prefixes (0.6 on; older nodes ignore it)
        if routes6 is None:
            msg["routes6"] = [()] * len(msg["nodes"])
        elif not isinstance(routes6, list) or len(routes6) != len(msg["nodes"]) or not all(
                isinstance(r, list) for r in routes6):
            raise ProtocolError("dir: routes6 do not match the nodes")
        else:
            msg["routes6"] = [tuple(_check_strings(r, MAX_ROUTES, MAX_CIDR, "dir routes6")) for r in routes6]
        locks = msg.get("locks")
        if locks is None:
            msg["locks"] = [b""] * len(msg["nodes"])
        elif not isinstance(locks, list) or len(locks) != len(msg["nodes"]) or not all(
                isinstance(c, bytes) and len(c) in (0, CHAIN_LEN) for c in locks):
            raise ProtocolError("dir: locks do not match the nodes")
    return msg


def _check_published(items) -> list:
    if len(items) > MAX_PUBLISHED:
        raise ProtocolError("pub: too many services")
    for e in items:
        if not (isinstance(e, list) and len(e) == 4 and isinstance(e[0], str) and 0 < len(e[0]) <= 63
                and e[1] in ("tcp", "udp") and all(type(v) is int for v in e[2:])
                and 1 <= e[2] <= 65535 and 1 <= e[3] <= 86400):
            raise ProtocolError("pub: bad service")
    return items


def _dir_hello(h) -> Hello:
    if not (isinstance(h, list) and len(h) == 3):
        raise ProtocolError("dir: a hello is not a 3-list")
    return _hello(*h, "dir")
