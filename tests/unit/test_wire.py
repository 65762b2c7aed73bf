"""The wire format: builders and parsers agree, and every parser takes any bytes calmly."""

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


def test_relayed_header_and_hint():
    assert wire.relayed_header(b"\x64\x40\x00\x01") == b"\x04\x00\x00\x00\x64\x40\x00\x01"
    assert len(wire.relayed_header(bytes(4))) == wire.RELAYED_HEADER_LEN
    hint = wire.build_hint(wire.HINT_UNKNOWN_SESSION, b"wxyz")
    assert len(hint) == wire.HINT_LEN and wire.parse_hint(hint) == (wire.HINT_UNKNOWN_SESSION, b"wxyz")
    for bad in (hint[:-1], hint + b"x", bytes((wire.DATA,)) + hint[1:]):
        try:
            wire.parse_hint(bad)
        except ProtocolError:
            continue
        raise AssertionError(f"a malformed hint parsed: {bad!r}")


def test_overhead_matches_the_mtu_arithmetic():
    # A full-size inner packet, sealed and relayed, fills a 1500-byte underlay exactly.
    assert 1500 - wire.UDP_OVERHEAD_IPV4 - wire.TUNNEL_OVERHEAD == 1432


@given(st.sampled_from([wire.parse_init, wire.parse_resp, wire.parse_hint]), st.integers(0, 7),
       st.binary(max_size=2000))
def test_each_parser_gives_fields_or_a_protocol_error(parse, t, rest):
    data = bytes([t]) + rest
    try:
        fields = parse(data)
    except ProtocolError:
        return
    assert data[0] == {wire.parse_init: wire.INIT, wire.parse_resp: wire.RESP, wire.parse_hint: wire.HINT}[parse]
    assert all(isinstance(f, (int, bytes)) for f in fields)
