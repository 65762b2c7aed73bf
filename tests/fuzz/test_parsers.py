"""Every parser of input from outside, fed whole, one byte at a time, and with any byte changed.

Invariant: a value, or the parser's own error (ProtocolError for the wire, TokenError for
tokens, ConfigError for configuration), never another exception. Samples are real: messages
captured from a simulated overlay, encodings the code itself produces.
"""

import functools
import json
import os
import string
import tempfile

import pytest
from hypothesis import given, strategies as st

from tunneld import config, policy
from tunneld.control.directory import DirectoryMirror
from tunneld.engine.offload import split
from tunneld.errors import ConfigError
from tunneld.net.noded import resolvers
from tunneld.proto import endpoint, lock, messages, wire
from tunneld.proto.cookie import CookieChecker, CookieJar
from tunneld.proto.errors import ProtocolError
from tunneld.proto.framing import Deframer, frame
from tunneld.proto.handshake import read_initiation
from tunneld.proto.token import Endorsement, JoinToken, TokenError
from tunneld.proto.version import OURS
from tunneld.state import NODE_FILE, load_node_state
from tests.fuzz.test_engine_fuzz import captured, overlay


def _text(fn):
    """A parser of text (an option value, a token) fed bytes: as the command line would decode them."""
    return lambda data: fn(data.decode("utf-8", "surrogateescape"))


def _control_then_mirror(data):
    msg = messages.decode_control(data)
    if msg["t"] == "dir":  # what a node does with a directory message that passed the decoder
        DirectoryMirror().apply(msg)
    return msg


def _toml(data):
    with tempfile.NamedTemporaryFile("wb", suffix=".toml", delete=False) as f:
        f.write(data)
    try:
        return config.load_file(f.name, {"relay", "token", "name", "state_dir", "mtu"})
    finally:
        os.unlink(f.name)


def _policy(data):
    """A policy file as a node reads it, then the table it would write: whatever passes the
    parser writes nothing into nft's file but checked names, prefixes and numbers."""
    p = policy.parse(data.decode("utf-8", "surrogateescape"), "policy.toml")
    text = policy.ruleset(p, {"a": ("100.64.0.2/32",), "w1": ("100.64.0.3/32", "198.18.2.0/24")}, "tunneld0")
    assert set(text) <= set(string.ascii_letters + string.digits + ' \n{}.,/:;"-_@!=')
    assert text.count('"') == 2 * text.count("comment") + 4  # the comments' and the interface's, no more
    return p


def _node_state(data):
    """node.json as a node reads it at start (and kube-env with the daemon down)."""
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, NODE_FILE), "wb") as f:
            f.write(data)
        saved = load_node_state(d, bytes.fromhex("ab" * 32))
    assert saved is None or saved.assignment.interface_address.ip in saved.assignment.interface_address.network
    return saved


def _split(data):
    packets, reason = split(data)
    assert bool(packets) != bool(reason)  # packets, or the reason there are none
    return packets or reason


def _endorsed(token) -> bytes:
    public, sig1 = lock.endorse(bytes(32), token.token_id, bytes(range(32)))
    return JoinToken(token.relay_public, token.token_id, token.secret,
                     Endorsement(public, bytes(range(32)), sig1)).encode().encode()


def _resolvers(data):
    with tempfile.NamedTemporaryFile("wb") as f:
        f.write(data)
        f.flush()
        return resolvers(f.name)


def _deframe(data):
    d = Deframer()
    return [m for i in range(len(data)) for m in d.feed(data[i : i + 1])]


@functools.lru_cache(maxsize=1)
def parsers():
    """name -> (parse, its errors, real samples). Each is what the product itself calls on
    input from outside."""
    seen = captured()
    net = overlay()
    wire_samples = sorted(set(seen), key=len)[:: max(1, len(seen) // 24)]
    token = net.token()
    init = next(m for m in seen if m[0] == wire.INIT)
    resp = next(m for m in seen if m[0] == wire.RESP)
    directory = next(messages.encode(m) for m in net.relay.directory.messages_for(None))
    cookie = CookieChecker(net.relay_identity.public, 0.0, bytes).reply(init, init[4:8], b"x", 0.0)
    wire_errors = (ProtocolError,)
    hello = OURS.wire()
    return {
        "wire.parse_init": (wire.parse_init, wire_errors, [init]),
        "wire.parse_resp": (wire.parse_resp, wire_errors, [resp]),
        "wire.parse_hint": (wire.parse_hint, wire_errors, [wire.build_hint(wire.HINT_UNKNOWN_SESSION, b"abcd")]),
        "read_initiation": (lambda d: read_initiation(net.relay_identity, d), wire_errors, [init]),
        "cookie reply": (lambda d: CookieJar(net.relay_identity.public).take(d, init, 0.0), (), [cookie]),
        "control + directory": (_control_then_mirror, wire_errors,
                                [directory, messages.encode({"t": "ping", "n": 3, "v": 7}),
                                 messages.encode({"t": "pong", "n": 3, "ep": "198.51.100.4:7000"})]),
        "join request": (messages.decode_join_request, wire_errors, [messages.encode(
            {"ts": bytes(12), "name": "alpha", "token": bytes(24), "mtu": 1500, "routes": ["198.18.0.0/16"],
             "lan": ["198.19.0.5:7000"], **hello})]),
        "join reply": (messages.decode_join_reply, wire_errors, [messages.encode(
            {"ok": True, "name": "alpha", "address": "100.64.0.1", "network": "100.64.0.0/10",
             "endpoint": "203.0.113.9:4000", "mtu": 1432, "relay_mtu": 1500, **hello})]),
        "peer hello": (messages.decode_hello, wire_errors, [messages.encode_hello(OURS)]),
        "tcp framing": (_deframe, wire_errors, [frame(s) + frame(s) for s in wire_samples[:4]]),
        "TUN read": (_split, (), [bytes(10) + bytes([0x45]) + bytes(39)]),
        "join token": (_text(JoinToken.parse), (TokenError,), [token.encode().encode(), _endorsed(token)]),
        "lock public key": (_text(lock.parse_public), (lock.LockError,), [lock.format_public(bytes(32)).encode()]),
        "--auto-approve-routes": (_text(lambda t: config.parse_prefixes(t, "--auto-approve-routes")), (ConfigError,),
                                  [b"198.18.0.0/15,0.0.0.0/0"]),
        "resolv.conf": (_resolvers, (), [b"nameserver 10.255.255.53\nnameserver 2001:db8::53\nsearch lan\n"]),
        "HOST:PORT": (_text(lambda t: config.parse_hostport(t, "--relay")), (ConfigError,),
                      [b"192.0.2.1:7000", b"[2001:db8::1]:7000"]),
        "--network": (_text(config.parse_network), (ConfigError,), [b"100.64.0.0/10"]),
        "--ttl": (_text(config.parse_duration), (ConfigError,), [b"24h", b"7d"]),
        "--advertise-routes": (_text(config.parse_routes), (ConfigError,), [b"198.18.0.0/16,198.19.0.0/16"]),
        "--config file": (_toml, (ConfigError,), [b'relay = "192.0.2.1:7000"\nname = "alpha"\nmtu = 1400\n']),
        "policy file": (_policy, (ConfigError,), [b'[groups]\nw = ["w1", "198.18.4.0/24"]\n[[allow]]\n'
                                                  b'from = ["a", "group:w", "100.64.9.0/24"]\n'
                                                  b'ports = ["tcp/10250", "udp/8472", "tcp/30000-32767", "icmp"]\n'
                                                  b'[[allow]]\nfrom = ["*"]\nports = ["tcp"]\nto = ["198.18.1.7"]\n']),
        "endpoint": (_text(endpoint.parse), (), [b"203.0.113.5:4000", b"[2001:db8::5]:4000"]),
        "node.json": (_node_state, (), [json.dumps({
            "relay_key": "ab" * 32, "relay": "192.0.2.1:7000", "name": "alpha", "address": "100.64.0.7",
            "network": "100.64.0.0/10", "mtu": 1432, "lock": "cd" * 32, "peers": {"bravo": "ef" * 32}},
            indent=1).encode()]),
    }


NAMES = sorted(parsers())


def outcome(name, data):
    parse, errors, _ = parsers()[name]
    try:
        parse(data)
    except errors:
        pass


@pytest.mark.parametrize("name", NAMES)
def test_every_real_sample_parses(name):
    parse, _, samples = parsers()[name]
    assert samples
    for sample in samples:  # a parser that refuses its own kind's real input would make the rest vacuous
        assert parse(sample)


@pytest.mark.parametrize("name", NAMES)
def test_every_prefix_one_byte_at_a_time(name):
    for sample in parsers()[name][2]:
        for end in range(len(sample) + 1):
            outcome(name, sample[:end])


@pytest.mark.parametrize("name", NAMES)
@given(data=st.binary(max_size=2048))
def test_any_bytes_whole(name, data):
    outcome(name, data)


@pytest.mark.parametrize("name", NAMES)
@given(pick=st.integers(0, 1000), pos=st.integers(0, 10**6), value=st.integers(0, 255),
       extra=st.binary(max_size=8))
def test_a_real_sample_with_a_byte_changed_or_more_appended(name, pick, pos, value, extra):
    samples = parsers()[name][2]
    sample = bytearray(samples[pick % len(samples)])
    if sample:
        sample[pos % len(sample)] = value
    outcome(name, bytes(sample) + extra)
