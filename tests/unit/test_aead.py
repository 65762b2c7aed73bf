"""The data path's AEAD (proto/aead.py, _aead.c) against cryptography's, byte for byte:
a peer with either reads the other. Built with tunneld wherever a C compiler and OpenSSL's
headers are there, as bin/setup installs them."""

import os
import shutil

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given, settings, strategies as st

from tunneld.proto import aead, wire
from tunneld.proto.session import Session

SUITES = [(False, AESGCM, 32), (False, AESGCM, 16), (True, ChaCha20Poly1305, 32)]


def test_it_was_built_where_it_can_be():
    if shutil.which("cc") and os.path.exists("/usr/include/openssl/evp.h"):
        assert aead.Aead is not None and aead.NATIVE and aead.KIND == "openssl"


@pytest.mark.parametrize("chacha, theirs, keylen", SUITES)
@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=3000), ad=st.binary(max_size=40), flip=st.integers(min_value=0))
def test_same_bytes_as_cryptography_and_every_flipped_bit_refused(chacha, theirs, keylen, data, ad, flip):
    key, nonce = os.urandom(keylen), os.urandom(12)
    ours, ref = aead.Aead(key, chacha), theirs(key)
    sealed = ours.encrypt(nonce, data, ad)
    assert sealed == ref.encrypt(nonce, data, ad)
    assert ours.decrypt(nonce, sealed, ad) == data
    bad = bytearray(sealed)
    bit = flip % (len(bad) * 8)
    bad[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(InvalidTag):
        ours.decrypt(nonce, bytes(bad), ad)
    with pytest.raises(InvalidTag):
        ours.decrypt(nonce, sealed, ad + b"x")
    with pytest.raises(InvalidTag):
        ours.decrypt(bytes(12), sealed, ad) if nonce != bytes(12) else ours.decrypt(b"\1" * 12, sealed, ad)


@pytest.mark.parametrize("chacha", [False, True])
def test_what_is_not_a_message_is_refused_cleanly(chacha):
    ours = aead.Aead(bytes(32), chacha)
    for short in (b"", b"x" * 15):
        with pytest.raises(InvalidTag):
            ours.decrypt(bytes(12), short, b"")
    with pytest.raises(ValueError):
        ours.encrypt(bytes(11), b"x", b"")
    with pytest.raises(ValueError):
        aead.Aead(bytes(24), chacha)
    with pytest.raises(TypeError):
        ours.encrypt(bytes(12), b"x")
    sealed = ours.encrypt(memoryview(bytes(12)), memoryview(b"views too"), bytearray(b"ad"))
    assert ours.decrypt(bytes(12), memoryview(sealed), b"ad") == b"views too"


@pytest.mark.parametrize("suite", wire.SUITES)
def test_sessions_with_either_implementation_read_each_other(monkeypatch, suite):
    k1, k2 = os.urandom(32), os.urandom(32)
    native = Session(b"A" * 4, b"B" * 4, suite, k1, k2, True, 0.0)
    monkeypatch.setattr(aead, "NATIVE", False)
    plain = Session(b"B" * 4, b"A" * 4, suite, k2, k1, False, 0.0)
    assert type(plain.channel) is not type(native.channel)
    for i in range(3):
        assert plain.open(native.seal(b"to the peer %d" % i)) == b"to the peer %d" % i
        assert native.open(plain.seal(b"and back %d" % i)) == b"and back %d" % i
    assert native.open(plain.seal(b"")) == b""


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from([0, 1, 127, 128, 255]),
                                st.integers(min_value=0, max_value=3 * 4096 + 200), st.booleans()),
                      min_size=1, max_size=120))
def test_the_c_replay_windows_give_the_python_verdicts(steps):
    """Counters in any order, in lanes low and high (a top byte of 128 and up is a negative
    number to a signed 64-bit integer), repeated, far ahead and far behind: the C channel
    opens and refuses exactly what the Python one does, for the same reasons."""
    k1, k2 = os.urandom(32), os.urandom(32)
    sender = Session(b"A" * 4, b"B" * 4, wire.SUITE_AESGCM, k1, k2, True, 0.0)
    receivers = []
    for native in (True, False):
        aead.NATIVE = native
        receivers.append(Session(b"B" * 4, b"A" * 4, wire.SUITE_AESGCM, k2, k1, False, 0.0))
    aead.NATIVE = aead.Channel is not None
    assert type(receivers[0].channel) is not type(receivers[1].channel)
    sent = []
    for lane, n, again in steps:
        if again and sent:
            msg = sent[n % len(sent)]
        else:
            sender.send_counter, sender.send_limit = lane << 56 | n, (lane << 56 | n) + 1
            msg = sender.seal(b"%d" % n)
            sent.append(msg)
        got = [r.open(msg) for r in receivers]
        assert got[0] == got[1]
        if got[0] is None:
            assert receivers[0].last_drop == receivers[1].last_drop
        for lane_ in (0, 1, 127, 128, 255):
            assert receivers[0].window_top(lane_) == receivers[1].window_top(lane_)


@pytest.mark.parametrize("lane", [0, 200])
def test_the_oldest_counter_the_window_spans_is_still_remembered(lane):
    """The window's edges, where a ring of words could let the newest counter's word wipe the
    oldest's: every counter seen within WINDOW of the top stays a replay, in both channels."""
    from tunneld.proto.replay import WINDOW
    for first, top in [(1, WINDOW), (63, WINDOW + 62), (64, WINDOW + 63), (0, WINDOW - 1), (5, 6),
                       (100, 100 + WINDOW), (7, 7 + 3 * WINDOW)]:
        k1, k2 = os.urandom(32), os.urandom(32)
        sender = Session(b"A" * 4, b"B" * 4, wire.SUITE_CHACHAPOLY, k1, k2, True, 0.0)
        msgs = {}
        for n in (first, top):
            sender.send_counter, sender.send_limit = lane << 56 | n, (lane << 56 | n) + 1
            msgs[n] = sender.seal(b"x")
        verdicts = []
        for native in (True, False):
            aead.NATIVE = native
            r = Session(b"B" * 4, b"A" * 4, wire.SUITE_CHACHAPOLY, k2, k1, False, 0.0)
            aead.NATIVE = aead.Channel is not None
            verdicts.append([r.open(msgs[first]), r.open(msgs[top]), r.open(msgs[first]), r.last_drop])
        expected = "replay" if top - first < WINDOW else "too_old"
        assert verdicts[0] == verdicts[1] == [b"x", b"x", None, expected], (first, top, verdicts)
