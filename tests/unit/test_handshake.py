"""tunneld's IK handshake: both sides end with matching sessions; anything else fails cleanly."""

import pytest
from hypothesis import given, settings, strategies as st

from tunneld.proto import wire
from tunneld.proto.errors import HandshakeError, ProtocolError
from tunneld.proto.handshake import Identity, Initiation, Timestamper, read_initiation, tai64n

ALICE, BOB = Identity.generate(), Identity.generate()


@pytest.mark.parametrize("suite", wire.SUITES)
def test_full_handshake(suite):
    init = Initiation(ALICE, BOB.public, suite, b"ai00", b"hello bob", 1.0)
    incoming = read_initiation(BOB, init.message)
    assert incoming.remote_public == ALICE.public and incoming.payload == b"hello bob"
    resp, bob_session = incoming.accept(b"bi00", b"hello alice", 1.0)
    alice_session, payload = init.complete(resp, 1.1)
    assert payload == b"hello alice"
    assert alice_session.confirmed and not bob_session.confirmed
    assert bob_session.open(alice_session.seal(b"data")) == b"data"
    assert alice_session.open(bob_session.seal(b"back")) == b"back"


def test_init_for_someone_else_fails_mac1():
    init = Initiation(ALICE, BOB.public, wire.SUITE_AESGCM, b"ai00", b"", 1.0)
    with pytest.raises(HandshakeError, match="mac1"):
        read_initiation(Identity.generate(), init.message)


def test_response_to_another_index_is_refused():
    init = Initiation(ALICE, BOB.public, wire.SUITE_AESGCM, b"ai00", b"", 1.0)
    other = Initiation(ALICE, BOB.public, wire.SUITE_AESGCM, b"ai01", b"", 1.0)
    resp, _ = read_initiation(BOB, other.message).accept(b"bi00", b"", 1.0)
    with pytest.raises(HandshakeError):
        init.complete(resp, 1.0)


def test_response_from_an_impostor_is_refused():
    init = Initiation(ALICE, BOB.public, wire.SUITE_AESGCM, b"ai00", b"", 1.0)
    mallory = Identity.generate()
    forged = Initiation(ALICE, mallory.public, wire.SUITE_AESGCM, b"ai00", b"", 1.0)
    resp, _ = read_initiation(mallory, forged.message).accept(b"mi00", b"", 1.0)
    with pytest.raises(ProtocolError):
        init.complete(resp, 1.0)


def test_a_forged_response_does_not_spoil_the_handshake_in_flight():
    """mac1 of a RESP is keyed by the initiator's public key, so anyone can pass it. A forgery
    that then fails Noise must leave the handshake as it was: the genuine response still
    completes it (before: the forgery had already mixed its ephemeral key into the state)."""
    init = Initiation(ALICE, BOB.public, wire.SUITE_AESGCM, b"ai00", b"", 1.0)
    resp, bob_session = read_initiation(BOB, init.message).accept(b"bi00", b"ok", 1.0)
    forged = wire.build_resp(wire.SUITE_AESGCM, b"xx00", b"ai00", Identity.generate().public + bytes(16),
                             ALICE.mac1_key)
    assert wire.mac1_valid(forged, ALICE.mac1_key)
    for _ in range(3):
        with pytest.raises(HandshakeError, match="does not authenticate"):
            init.complete(forged, 1.0)
    session, payload = init.complete(resp, 1.1)
    assert payload == b"ok" and bob_session.open(session.seal(b"data")) == b"data"


def test_tai64n_orders_like_time():
    assert tai64n(1_000_000_000_000_000_001) > tai64n(1_000_000_000_000_000_000)
    assert tai64n(2 * 10**18) > tai64n(10**18 + 999_999_999)
    assert len(tai64n(1_700_000_000 * 10**9)) == 12


def test_timestamps_only_ever_go_up_even_when_the_clock_steps_back():
    clock = iter([2 * 10**18, 2 * 10**18, 10**18, 3 * 10**18])
    stamp = Timestamper(lambda: next(clock))
    first, second, third, fourth = stamp(), stamp(), stamp(), stamp()
    assert first < second < third < fourth  # equal, then earlier readings still give newer stamps
    assert fourth == tai64n(3 * 10**18)


@settings(max_examples=200)
@given(st.binary(max_size=600))
def test_read_initiation_any_bytes(data):
    try:
        read_initiation(BOB, data)
    except ProtocolError:
        pass


@settings(max_examples=200)
@given(st.binary(max_size=300))
def test_complete_any_bytes(data):
    init = Initiation(ALICE, BOB.public, wire.SUITE_AESGCM, b"ai00", b"", 1.0)
    try:
        init.complete(data, 1.0)
    except ProtocolError:
        pass


@settings(max_examples=100)
@given(st.integers(0, 199), st.integers(0, 7))
def test_any_bit_flip_of_an_init_is_refused(position, bit):
    init = Initiation(ALICE, BOB.public, wire.SUITE_AESGCM, b"ai00", b"payload", 1.0)
    msg = bytearray(init.message)
    position %= len(msg) - 2 * wire.MAC_LEN  # mac2 is not checked yet
    msg[position] ^= 1 << bit
    with pytest.raises(ProtocolError):
        read_initiation(BOB, bytes(msg))
