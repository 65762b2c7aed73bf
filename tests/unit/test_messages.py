"""Control messages: valid ones round-trip, anything else is a ProtocolError."""

import msgpack
import pytest
from hypothesis import given, strategies as st

from tunneld.proto import messages
from tunneld.proto.version import LEGACY, MIN_PROTOCOL, OURS, PROTOCOL, Hello
from tunneld.proto.errors import ProtocolError

NODE = ["alpha", b"\x64\x40\x00\x01", b"k" * 32, True, "203.0.113.5:4000", 1500, ["198.18.0.0/16"],
        ["198.19.1.2:4000"]]


@pytest.mark.parametrize("msg", [
    {"t": "ping", "n": 1, "v": None},
    {"t": "ping", "n": 2, "v": 123456789},
    {"t": "pong", "n": 2, "ep": "203.0.113.5:4000"},
    {"t": "dir", "v": 5, "base": None, "i": 0, "c": 1, "mtu": 1432, "nodes": [NODE], "gone": []},
    {"t": "dir", "v": 6, "base": 5, "i": 0, "c": 1, "mtu": 1432, "nodes": [], "gone": [b"\x64\x40\x00\x02"]},
    {"t": "bye"},
    {"t": "pub", "s": [["web", "tcp", 8080, 60], ["dns", "udp", 53, 30]]},
    {"t": "pub", "s": []},
    {"t": "open", "id": 7, "port": 8080, "k": b"k" * 32, "src": "198.51.100.7:5555", "dst": "192.0.2.1:18080",
     "pp": 2, "s": "web"},
    {"t": "shut", "id": 7},
    {"t": "udp", "f": 3, "p": 53, "d": b"query"},
    {"t": "udp", "f": 3, "p": 0, "d": b"x" * messages.MAX_DATAGRAM},
])
def test_valid_control_round_trips(msg):
    out = messages.decode_control(messages.encode(msg))
    if msg["t"] == "dir":
        assert out["nodes"] == [tuple(n[:6]) + (tuple(n[6]), tuple(n[7])) for n in msg["nodes"]]
    else:
        assert out == msg


@pytest.mark.parametrize("msg", [
    {"t": "ping", "n": True, "v": None},  # a bool is not a counter
    {"t": "ping", "n": -1, "v": None},
    {"t": "ping", "v": None},
    {"t": "pong", "n": 1, "ep": "x" * 200},
    {"t": "dir", "v": 5, "base": None, "i": 1, "c": 1, "mtu": 1432, "nodes": [], "gone": []},
    {"t": "dir", "v": 5, "base": None, "i": 0, "c": 1, "mtu": 1432, "nodes": [NODE[:4]], "gone": []},
    {"t": "dir", "v": 5, "base": None, "i": 0, "c": 1, "mtu": 1432, "nodes": [NODE[:2] + [b"short"] + NODE[3:]], "gone": []},
    {"t": "dir", "v": 5, "base": None, "i": 0, "c": 1, "mtu": 1432, "nodes": [NODE] * 65, "gone": []},
    {"t": "dir", "v": 5, "base": None, "i": 0, "c": 1, "mtu": 1432, "nodes": [NODE[:6] + [["x"] * 17, []]], "gone": []},
    {"t": "dir", "v": 5, "base": None, "i": 0, "c": 1, "mtu": 1432, "nodes": [NODE[:5] + [True, [], []]], "gone": []},
    {"t": "dir", "v": 5, "base": None, "i": 0, "c": 1, "nodes": [], "gone": []},  # no mtu
    {"t": "pub", "s": [["web", "sctp", 8080, 60]]},
    {"t": "pub", "s": [["web", "tcp", 0, 60]]},
    {"t": "pub", "s": [["web", "tcp", 80, 60, "extra"]]},
    {"t": "pub", "s": [["", "tcp", 80, 60]]},
    {"t": "pub", "s": [["web", "tcp", 80, 0]]},
    {"t": "pub", "s": [["w", "tcp", 80, 60]] * 257},
    {"t": "open", "id": 7, "port": 8080, "k": b"short", "src": "a:1", "dst": "b:2", "pp": 0, "s": "web"},
    {"t": "open", "id": 7, "port": 70000, "k": b"k" * 32, "src": "a:1", "dst": "b:2", "pp": 0, "s": "web"},
    {"t": "open", "id": 7, "port": 80, "k": b"k" * 32, "src": "a:1", "dst": "b:2", "pp": 3, "s": "web"},
    {"t": "udp", "f": 3, "p": 53, "d": b""},
    {"t": "udp", "f": 3, "p": 53, "d": b"x" * (messages.MAX_DATAGRAM + 1)},
    {"t": "udp", "f": 3, "p": 53, "d": "text"},
    {"t": "shut"},
    {"t": "nope"},
    {"n": 1},
    [1, 2, 3],
])
def test_invalid_control_is_refused(msg):
    with pytest.raises(ProtocolError):
        messages.decode_control(messages.encode(msg))


def test_join_request_and_replies():
    req = {"ts": b"t" * 12, "name": "alpha", "token": b"x" * 24, "mtu": 1500, "routes": ["198.18.0.0/16"],
           "lan": ["198.19.1.2:4000"]}
    assert messages.decode_join_request(messages.encode(req)) == {**req, "hello": LEGACY, "chain": None}  # 0.1.0
    chain = bytes(range(168))
    assert messages.decode_join_request(messages.encode({**req, "chain": chain}))["chain"] == chain
    for bad in (b"short", "text", 7):
        with pytest.raises(ProtocolError, match="chain"):
            messages.decode_join_request(messages.encode({**req, "chain": bad}))
    hello = messages.decode_join_request(messages.encode({**req, **OURS.wire()}))["hello"]
    assert hello == OURS and hello.has("hello") and hello.problem() is None
    for bad in ({"pv": 0, "pm": 0, "caps": []}, {"pv": 2, "pm": 3, "caps": []}, {"pv": 2, "pm": 1, "caps": "x"},
                {"pv": 2, "pm": 1, "caps": [""]}, {"pv": True, "pm": 1, "caps": []}, {"pv": 2}):
        with pytest.raises(ProtocolError):
            messages.decode_join_request(messages.encode({**req, **bad}))
    assert messages.decode_join_request(messages.encode({**req, "token": None}))["token"] is None
    with pytest.raises(ProtocolError):
        messages.decode_join_request(messages.encode({**req, "token": b"short"}))
    with pytest.raises(ProtocolError):
        messages.decode_join_request(messages.encode({**req, "routes": [1]}))
    ok = {"ok": True, "name": "a", "address": "100.64.0.1", "network": "100.64.0.0/10", "endpoint": "x:1",
          "mtu": 1382, "relay_mtu": 1500}
    assert messages.decode_join_reply(messages.encode(ok)) == {**ok, "hello": LEGACY, "network6": None}
    v6 = {**ok, "network6": "fd3a:5e1c:92f0::/64"}  # 0.6 on; a node takes what it can use (overlay6.usable)
    assert messages.decode_join_reply(messages.encode(v6))["network6"] == "fd3a:5e1c:92f0::/64"
    with pytest.raises(ProtocolError):
        messages.decode_join_reply(messages.encode({**ok, "network6": 64}))
    no = {"ok": False, "code": "bad_token", "error": "no", "retry": False, **OURS.wire()}
    assert messages.decode_join_reply(messages.encode(no)) == {**no, "hello": OURS}
    with pytest.raises(ProtocolError):
        messages.decode_join_reply(messages.encode({"ok": 1}))


def test_peer_hellos_and_what_a_range_that_misses_ours_says():
    assert messages.decode_hello(b"") == LEGACY  # a 0.1.0 responder's empty RESP payload
    assert messages.decode_hello(messages.encode_hello(OURS)) == OURS
    for bad in (b"\x01", messages.encode({"v": 2}), messages.encode([2, 1, []])):
        with pytest.raises(ProtocolError):
            messages.decode_hello(bad)
    newer = Hello(PROTOCOL + 3, PROTOCOL + 1)
    assert newer.problem() == (f"it speaks protocol {PROTOCOL + 1}..{PROTOCOL + 3}, newer than this tunneld's "
                               f"{MIN_PROTOCOL}..{PROTOCOL}: upgrade this tunneld")
    older = Hello(0, 0)  # nothing speaks protocol 0, but a hello may say anything
    assert older.problem(us="the relay", them="this node").endswith("older than the relay's "
                                                                    f"{MIN_PROTOCOL}..{PROTOCOL}: upgrade this node")
    assert OURS.problem() is None and LEGACY.problem() is None  # 0.1.0 is still spoken


def test_oversized_and_garbage():
    with pytest.raises(ProtocolError):
        messages.decode_control(b"\x00" * 20000)
    with pytest.raises(ProtocolError):
        messages.decode_control(b"\xc1")  # a byte msgpack never uses


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=20) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=30)


@given(st.binary(max_size=600))
def test_any_bytes(data):
    for decode in (messages.decode_control, messages.decode_join_request, messages.decode_join_reply):
        try:
            decode(data)
        except ProtocolError:
            pass


@given(st.dictionaries(st.sampled_from(["t", "n", "v", "ep", "base", "i", "c", "nodes", "gone", "ts", "name",
                                        "token", "mtu", "ok", "code", "error", "retry"]),
                       json_like, max_size=10))
def test_any_well_formed_msgpack(obj):
    data = msgpack.packb(obj, use_bin_type=True)
    for decode in (messages.decode_control, messages.decode_join_request, messages.decode_join_reply):
        try:
            decode(data)
        except ProtocolError:
            pass
