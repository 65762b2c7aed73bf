"""Join tokens: round trip, damage, and the secret check."""

import os

import pytest
from hypothesis import given, strategies as st

from tunneld.proto.token import JoinToken, TokenError, secret_hash, secret_matches


def test_round_trip():
    t = JoinToken.new(b"k" * 32, os.urandom)
    text = t.encode()
    assert text.startswith("tdj1.") and "=" not in text
    assert JoinToken.parse(text) == t
    assert JoinToken.parse("  " + text + "\n") == t
    assert len(t.credential) == 24


@pytest.mark.parametrize("text,why", [
    ("", "starts with"), ("hello", "starts with"), ("tdj1.!!!!", "damaged"),
    ("tdj1.AAAA", "truncated"),
])
def test_bad_tokens_say_what_to_do(text, why):
    with pytest.raises(TokenError, match=why) as exc:
        JoinToken.parse(text)
    assert "tunneld token" in str(exc.value)


def test_truncated_real_token():
    text = JoinToken.new(b"k" * 32, os.urandom).encode()
    with pytest.raises(TokenError):
        JoinToken.parse(text[:-3])


def test_secret_hash():
    h = secret_hash(b"s" * 16)
    assert secret_matches(b"s" * 16, h) and not secret_matches(b"t" * 16, h)


@given(st.text(max_size=200))
def test_parse_any_text(text):
    try:
        JoinToken.parse(text)
    except TokenError:
        pass
