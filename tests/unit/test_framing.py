"""TCP framing, fed whole and one byte at a time."""

import pytest
from hypothesis import given, strategies as st

from tunneld.proto.errors import ProtocolError
from tunneld.proto.framing import Deframer, frame

messages = st.lists(st.binary(min_size=1, max_size=3000), max_size=20)


@given(messages, st.data())
def test_any_split_gives_back_the_messages(msgs, data):
    stream = b"".join(frame(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    d = Deframer()
    out = []
    prev = 0
    for cut in cuts + [len(stream)]:
        out += d.feed(stream[prev:cut])
        prev = cut
    assert out == msgs
    assert d.pending == 0


@given(messages)
def test_one_byte_at_a_time(msgs):
    stream = b"".join(frame(m) for m in msgs)
    d = Deframer()
    out = []
    for i in range(len(stream)):
        out += d.feed(stream[i : i + 1])
    assert out == msgs


@given(st.binary(max_size=5000))
def test_random_bytes_give_messages_or_a_protocol_error(data):
    d = Deframer()
    try:
        for m in d.feed(data):
            assert 1 <= len(m) <= 0xFFFF
    except ProtocolError:
        return
    assert d.pending <= 0xFFFF + 1


def test_zero_length_is_an_error():
    with pytest.raises(ProtocolError):
        Deframer().feed(b"\x00\x00")
