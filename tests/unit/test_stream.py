"""proto/stream.py: the sealed hop of a published TCP connection."""

import os

from tunneld.proto.stream import WORK_LEN, StreamCipher, proves, read_work, work_frame


def test_chunks_cross_both_ways_in_order_and_nothing_else_opens():
    k = os.urandom(32)
    relay, node = StreamCipher(k, relay_side=True), StreamCipher(k, relay_side=False)
    a, b = relay.seal(b"GET / HTTP/1.1\r\n\r\n"), relay.seal(b"more")
    assert node.open(a) == b"GET / HTTP/1.1\r\n\r\n" and node.open(b) == b"more"
    back = node.seal(b"HTTP/1.1 200 OK\r\n")
    assert relay.open(back) == b"HTTP/1.1 200 OK\r\n"
    assert StreamCipher(k, relay_side=True).open(back[:-1] + bytes([back[-1] ^ 1])) is None  # forged
    assert node.open(a) is None  # replayed: the counter has moved on
    fresh = StreamCipher(k, relay_side=False)
    assert fresh.open(b) is None  # reordered
    assert StreamCipher(k, relay_side=True).open(relay.seal(b"x")) is None  # reflected to its sender
    assert StreamCipher(os.urandom(32), relay_side=False).open(relay.seal(b"y")) is None  # another k


def test_the_work_frame_names_the_connection_and_proves_k():
    k = os.urandom(32)
    frame = work_frame(0x1122334455667788, k)
    assert len(frame) == WORK_LEN and read_work(frame) == 0x1122334455667788
    assert proves(frame, k) and not proves(frame, os.urandom(32))
    assert read_work(frame[:-1]) is None and read_work(b"\x00" + frame[1:]) is None
