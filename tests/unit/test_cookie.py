"""Cookies and the limits behind them (proto/cookie.py, control/ratelimit.py)."""

import os

from hypothesis import given, strategies as st

from tunneld.control.ratelimit import LoadMeter, SourceLimiter
from tunneld.proto import wire
from tunneld.proto.cookie import COOKIE_LIFETIME, SECRET_LIFETIME, CookieChecker, CookieJar
from tunneld.proto.handshake import Identity, Initiation

RELAY = Identity.generate()
NODE = Identity.generate()


def init(now=0.0, index=b"\x01\x02\x03\x04"):
    return Initiation(NODE, RELAY.public, wire.SUITE_AESGCM, index, b"hello", now).message


def test_a_cookie_proves_the_source_that_asked_for_it():
    checker, jar = CookieChecker(RELAY.public, 0.0, os.urandom), CookieJar(RELAY.public)
    msg = init()
    here, there = b"198.51.100.7:4000", b"198.51.100.8:4000"
    assert not checker.mac2_valid(msg, here, 1.0)  # mac2 is zero until a cookie is given
    reply = checker.reply(msg, msg[4:8], here, 1.0)
    assert len(reply) == wire.COOKIE_REPLY_LEN < len(msg)  # never an amplifier
    assert reply[0] == wire.COOKIE and reply[4:8] == msg[4:8]  # answers the INIT's sender index
    assert jar.take(reply, msg, 1.0)
    stamped = jar.stamp(msg, 1.5)
    assert stamped[:-16] == msg[:-16]  # mac2 is all that changes; mac1 still holds
    assert wire.mac1_valid(stamped, RELAY.mac1_key)
    assert checker.mac2_valid(stamped, here, 1.5)
    assert not checker.mac2_valid(stamped, there, 1.5)
    # A later INIT of the same node carries a valid mac2 too, while the cookie is fresh.
    assert checker.mac2_valid(jar.stamp(init(index=b"\x09\x09\x09\x09"), 2.0), here, 2.0)


def test_a_cookie_reply_serves_only_the_message_it_answers():
    checker, jar = CookieChecker(RELAY.public, 0.0, os.urandom), CookieJar(RELAY.public)
    msg, other = init(), init(index=b"\x05\x05\x05\x05")
    reply = checker.reply(msg, msg[4:8], b"x", 1.0)
    assert not jar.take(reply, other, 1.0)  # bound to the mac1 of msg
    tampered = reply[:-1] + bytes([reply[-1] ^ 1])
    assert not jar.take(tampered, msg, 1.0)
    assert not CookieJar(Identity.generate().public).take(reply, msg, 1.0)  # another relay's key
    assert jar.stamp(msg, 1.0) == msg  # nothing taken: nothing stamped


def test_cookies_go_stale_as_the_secret_turns():
    checker, jar = CookieChecker(RELAY.public, 0.0, os.urandom), CookieJar(RELAY.public)
    msg = init()
    assert jar.take(checker.reply(msg, msg[4:8], b"src", 0.0), msg, 0.0)
    stamped = jar.stamp(msg, 0.0)
    assert checker.mac2_valid(stamped, b"src", SECRET_LIFETIME + 1)  # one turn: still accepted
    assert not checker.mac2_valid(stamped, b"src", 3 * SECRET_LIFETIME)
    assert jar.stamp(msg, COOKIE_LIFETIME + 0.1) == msg  # the node stops using it in time


@given(st.binary(max_size=200), st.binary(max_size=40))
def test_any_bytes_are_a_value_or_a_protocol_error(data, source):
    checker, jar = CookieChecker(RELAY.public, 0.0, os.urandom), CookieJar(RELAY.public)
    assert checker.mac2_valid(data, source, 1.0) is False
    assert jar.take(data, init(), 1.0) is False


def test_source_limiter_rate_burst_and_bounded_table():
    lim = SourceLimiter(rate=10, burst=5, limit=100)
    assert [lim.allow("a", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert lim.allow("b", 0.0)  # sources do not share a budget
    assert not lim.allow("a", 0.05) and lim.allow("a", 0.11)  # 10 a second refill
    for i in range(1000):  # a flood of distinct sources never grows the table past its limit
        lim.allow(f"spoofed-{i}", 0.2)
    assert len(lim) <= 100
    lim.prune(10.0)  # idle sources are forgotten
    assert len(lim) == 0


def test_load_meter():
    meter = LoadMeter(threshold=3)
    assert [meter.event(0.1 * i) for i in range(5)] == [False, False, False, True, True]
    assert meter.under_load(1.3) and not meter.under_load(1.5)  # a second after the last excess
    assert not meter.event(2.0)
    # A flood that goes on keeps the meter under load from one second into the next.
    assert [meter.event(3.0 + 0.01 * i) for i in range(5)][-1]
    assert meter.event(4.2) and meter.under_load(5.1)
    assert not meter.event(6.5)
