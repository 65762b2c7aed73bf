"""The wire format: builders and parsers agree, and parse() takes any bytes calmly."""

from hypothesis import given, strategies as st

from tunneld.proto import wire
from tunneld.proto.errors import ProtocolError


def test_init_round_trip_and_mac1():
    key = wire.mac1_key(b"r" * 32)
    msg = wire.build_init(wire.SUITE_AESGCM, b"\x01\x02\x03\x04", b"n" * 100, key)
    assert msg[0] == wire.INIT and len(msg) == 8 + 100 + 32
    assert wire.parse_init(msg) == (wire.SUITE_AESGCM, b"\x01\x02\x03\x04", b"n" * 100)
    assert wire.mac1_valid(msg, key)
    assert not wire.mac1_valid(msg, wire.mac1_key(b"x" * 32))
    tampered = bytearray(msg)
    tampered[20] ^= 1
    assert not wire.mac1_valid(bytes(tampered), key)


def test_resp_round_trip():
    key = wire.mac1_key(b"i" * 32)
    msg = wire.build_resp(wire.SUITE_CHACHAPOLY, b"ssss", b"rrrr", b"n" * 48, key)
    assert wire.parse_resp(msg) == (wire.SUITE_CHACHAPOLY, b"ssss", b"rrrr", b"n" * 48)
    assert wire.mac1_valid(msg, key)


def test_data_relayed_hint():
    data = wire.DATA_HEADER.pack(wire.DATA, b"abcd", 7) + b"x" * 16
    assert wire.parse_data(data) == (b"abcd", 7)
    relayed = wire.relayed_header(b"\x64\x40\x00\x01") + data
    assert wire.parse(relayed) == (wire.RELAYED, b"\x64\x40\x00\x01", (wire.DATA, b"abcd", 7))
    assert wire.parse(wire.build_hint(wire.HINT_UNKNOWN_SESSION, b"wxyz")) == (
        wire.HINT, wire.HINT_UNKNOWN_SESSION, b"wxyz")


def test_relay_only_types_cannot_be_relayed():
    inner = wire.build_hint(wire.HINT_UNKNOWN_SESSION)
    try:
        wire.parse(wire.relayed_header(bytes(4)) + inner)
    except ProtocolError:
        pass
    else:
        raise AssertionError("a hint inside a relayed message was accepted")


def test_overhead_matches_the_mtu_arithmetic():
    # A full-size inner packet, sealed and relayed, fills a 1500-byte underlay exactly.
    assert 1500 - wire.UDP_OVERHEAD_IPV4 - wire.TUNNEL_OVERHEAD == 1432


@given(st.binary(max_size=2000))
def test_parse_any_bytes_gives_a_value_or_a_protocol_error(data):
    try:
        fields = wire.parse(data)
    except ProtocolError:
        return
    assert fields[0] in (wire.INIT, wire.RESP, wire.DATA, wire.RELAYED, wire.HINT)


@given(st.sampled_from([1, 2, 3, 4, 5]), st.binary(max_size=400))
def test_parse_plausible_types(t, rest):
    try:
        wire.parse(bytes([t]) + rest)
    except ProtocolError:
        pass
