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
    assert type(plain._encrypt.__self__) is not type(native._encrypt.__self__)
    for i in range(3):
        assert plain.open(native.seal(b"to the peer %d" % i)) == b"to the peer %d" % i
        assert native.open(plain.seal(b"and back %d" % i)) == b"and back %d" % i
    assert native.open(plain.seal(b"")) == b""
