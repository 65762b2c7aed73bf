"""Transport sessions: sealing, opening, replays, tampering, limits."""

import os

import pytest

from tunneld.proto import aead, session as session_mod
from tunneld.proto import wire
from tunneld.proto.replay import WINDOW
from tunneld.proto.session import Session


@pytest.fixture(autouse=True, params=["openssl", "cryptography"])
def implementation(request, monkeypatch):
    """Every test for both channels (proto/channel.py): the C one, and the Python one."""
    if request.param == "openssl" and aead.Channel is None:
        pytest.fail("the C module was not built: bin/setup installs gcc and libssl-dev")
    monkeypatch.setattr(aead, "NATIVE", request.param == "openssl")
    return request.param


def pair(suite):
    k1, k2 = os.urandom(32), os.urandom(32)
    a = Session(b"AAAA", b"BBBB", suite, k1, k2, True, 0.0)
    b = Session(b"BBBB", b"AAAA", suite, k2, k1, False, 0.0)
    return a, b


@pytest.mark.parametrize("suite", wire.SUITES)
def test_round_trip_both_ways(suite):
    a, b = pair(suite)
    for i in range(5):
        msg = a.seal(b"ping %d" % i)
        assert msg[0] == wire.DATA and msg[4:8] == b"BBBB"
        assert int.from_bytes(msg[8:16], "big") == i  # the counter, in the clear
        assert b.open(msg) == b"ping %d" % i
        assert a.open(b.seal(b"pong")) == b"pong"


@pytest.mark.parametrize("suite", wire.SUITES)
def test_replay_and_tamper_are_refused(suite):
    a, b = pair(suite)
    msg = a.seal(b"once")
    assert b.open(msg) == b"once"
    assert b.open(msg) is None and b.last_drop == "replay"
    msg2 = bytearray(a.seal(b"twice"))
    msg2[-1] ^= 1
    assert b.open(bytes(msg2)) is None and b.last_drop == "auth"
    header_changed = bytearray(a.seal(b"thrice"))
    header_changed[1] = 9  # reserved bytes are authenticated too
    assert b.open(bytes(header_changed)) is None and b.last_drop == "auth"


def test_forged_counter_does_not_move_the_window():
    a, b = pair(wire.SUITE_AESGCM)
    forged = bytearray(a.seal(b"x"))
    forged[8:16] = (2**40).to_bytes(8, "big")
    assert b.open(bytes(forged)) is None
    assert b.open(a.seal(b"next")) == b"next"  # counter 1, still fresh


def test_reordered_packets_are_accepted_once():
    a, b = pair(wire.SUITE_CHACHAPOLY)
    msgs = [a.seal(b"%d" % i) for i in range(10)]
    for m in reversed(msgs):
        assert b.open(m) is not None
    assert all(b.open(m) is None for m in msgs)


def test_prefix_is_kept_in_front():
    a, b = pair(wire.SUITE_AESGCM)
    msg = a.seal(b"payload", b"PREFIX!!")
    assert msg.startswith(b"PREFIX!!") and b.open(msg[8:]) == b"payload"


def test_short_message():
    _, b = pair(wire.SUITE_AESGCM)
    assert b.open(b"\x03" + bytes(20)) is None and b.last_drop == "short"


def test_limits(monkeypatch):
    monkeypatch.setattr(session_mod, "REJECT_AFTER_MESSAGES", 3)
    monkeypatch.setattr(session_mod, "REKEY_AFTER_MESSAGES", 2)
    a, _ = pair(wire.SUITE_AESGCM)
    assert not a.wants_rekey(1.0)
    a.seal(b"1"), a.seal(b"2")
    assert a.wants_rekey(1.0)
    a.seal(b"3")
    assert a.seal(b"4") is None and a.expired(1.0)


def test_lifetimes():
    a, b = pair(wire.SUITE_AESGCM)
    assert not a.wants_rekey(session_mod.REKEY_AFTER_TIME - 1)
    assert a.wants_rekey(session_mod.REKEY_AFTER_TIME)
    assert not b.wants_rekey(session_mod.REKEY_AFTER_TIME)  # the responder waits a little longer
    assert a.expired(session_mod.REJECT_AFTER_TIME)


def test_a_counter_below_the_window_is_counted_too_old_not_replayed():
    """Seen before: replay. Older than the window spans (reordering beyond it, as a datagram
    handed between a node's workers under overload can be): too_old, apart."""
    a, b = pair(wire.SUITE_AESGCM)
    first = a.seal(b"first")
    assert b.open(first) == b"first"
    assert b.open(first) is None and b.last_drop == "replay"
    late = a.seal(b"late")
    a.send_counter += WINDOW
    assert b.open(a.seal(b"far ahead")) == b"far ahead"
    assert b.open(late) is None and b.last_drop == "too_old"
