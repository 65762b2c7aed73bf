"""One published TCP connection: its plain half (the client, at the relay; the service, at
the node) glued to its sealed half, the work connection between relay and node
(proto/stream.py), with flow control both ways.

  plain -> sealed   each read, cut into chunks of at most CHUNK, sealed and framed
  sealed -> plain   frames opened in order; an empty chunk is the sender's end of stream
                    (its plain half said EOF): write_eof on ours
The connection ends cleanly once both ends were said. Anything else cuts it: a chunk
that fails to open, the work connection closing before the end (a reset, or a FIN that
anyone on the path could forge), the plain half reset. Cut means both halves are
aborted, so a client never takes a truncated stream for a whole one.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import logging
from collections import Counter

from ..drops import Drop
from ..proto.errors import ProtocolError
from ..proto.framing import Deframer, frame
from ..proto.stream import CHUNK, StreamCipher

log = logging.getLogger("tunneld.publish")

LINGER_NONE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets


class Splice:
    def __init__(self, stats: Counter, drops: Counter, relay_side: bool, on_end=None):
        self.stats = stats  # the service's: bytes_in (client to service), bytes_out
        self.drops = drops
        self.relay_side = relay_side
        self.on_end = on_end  # on_end(splice, error): once, when it is over
        self.cipher: StreamCipher | None = None
        self.plain: asyncio.Transport | None = None
        self.sealed: asyncio.Transport | None = None
        self.deframer = Deframer()
        self.sent_end = self.got_end = self.over = False
        self.early: list[bytes] = []
        self._from_plain = "bytes_in" if relay_side else "bytes_out"
        self._from_sealed = "bytes_out" if relay_side else "bytes_in"

    def join(self, k: bytes, sealed: asyncio.Transport) -> None:
        """The work connection is there (k proven, or sent): start carrying."""
        self.cipher = StreamCipher(k, self.relay_side)
        self.sealed = sealed
        early, self.early = self.early, []
        for data in early:
            self.plain_in(data) if data else self.plain_eof()
        if self.plain is not None and not self.plain.is_closing():
            self.plain.resume_reading()

    # -- the plain half ------------------------------------------------------------------

    def plain_in(self, data: bytes) -> None:
        if self.over:
            return
        if self.cipher is None:  # read before the pause took (uvloop may hand over one read)
            self.early.append(data)
            return
        seal = self.cipher.seal
        self.stats[self._from_plain] += len(data)
        if len(data) <= CHUNK:
            self.sealed.write(frame(seal(data)))
        else:
            self.sealed.write(b"".join(frame(seal(data[i:i + CHUNK])) for i in range(0, len(data), CHUNK)))

    def plain_eof(self) -> None:
        if self.sent_end or b"" in self.early:  # uvloop says EOF again to a transport resumed after it
            return
        if self.cipher is None:  # before the work connection: said once it is there
            self.early.append(b"")
            return
        self.sealed.write(frame(self.cipher.seal(b"")))
        self.sent_end = True
        self._maybe_done()

    # -- the sealed half -----------------------------------------------------------------

    def sealed_in(self, data: bytes) -> None:
        try:
            frames = self.deframer.feed(data)
        except ProtocolError:
            self.drops[Drop.TCP_BAD_FRAMING] += 1
            self.cut("bad framing")
            return
        self.frames_in(frames)

    def frames_in(self, frames) -> None:
        if self.over:
            return
        plain, opened = self.plain, self.cipher.open
        for f in frames:
            chunk = opened(f)
            if chunk is None or self.got_end:
                self.drops[Drop.STREAM_FORGED] += 1
                self.cut("a chunk failed to open" if chunk is None else "a chunk after the end")
                return
            if not chunk:
                self.got_end = True
                if plain.can_write_eof() and not plain.is_closing():
                    plain.write_eof()
                self._maybe_done()
                continue
            self.stats[self._from_sealed] += len(chunk)
            plain.write(chunk)

    # -- ends ----------------------------------------------------------------------------

    def lost(self, half, exc=None) -> None:
        """A half's connection is gone: clean if both ends were said, else cut."""
        if self.over:
            return
        if self.sent_end and self.got_end:
            self._end(False)
        else:
            self.cut(f"the {'plain' if isinstance(half, PlainSide) else 'work'} connection closed "
                     f"({exc or 'before the end'})")

    def _maybe_done(self) -> None:
        if self.sent_end and self.got_end:
            self._end(False)

    def cut(self, why: str = "") -> None:
        if not self.over:
            log.debug("published connection cut: %s", why or "closed")
            self._end(True)

    def _end(self, error: bool) -> None:
        self.over = True
        for t in (self.plain, self.sealed):
            if t is not None and not t.is_closing():
                reset(t) if error else t.close()
        if self.on_end is not None:
            self.on_end(self, error)


class PlainSide(asyncio.Protocol):
    """The plain half's protocol; it waits (not reading) until the work connection joins."""

    def __init__(self, splice: Splice):
        self.splice = splice

    def connection_made(self, transport):
        self.splice.plain = transport
        if self.splice.sealed is None:
            transport.pause_reading()

    def data_received(self, data):
        self.splice.plain_in(data)

    def eof_received(self):
        self.splice.plain_eof()
        return True  # the other direction may still be carrying

    def connection_lost(self, exc):
        self.splice.lost(self)

    def pause_writing(self):
        if self.splice.sealed is not None:
            self.splice.sealed.pause_reading()

    def resume_writing(self):
        if self.splice.sealed is not None and not self.splice.sealed.is_closing():
            self.splice.sealed.resume_reading()


class SealedSide(asyncio.Protocol):
    """The sealed half's protocol where we opened the work connection (the node)."""

    def __init__(self, splice: Splice):
        self.splice = splice

    def data_received(self, data):
        self.splice.sealed_in(data)

    def eof_received(self):
        self.splice.lost(self, "EOF")  # an unauthenticated FIN: the ends come sealed
        return False

    def connection_lost(self, exc):
        self.splice.lost(self, exc)

    def pause_writing(self):
        plain_paused(self.splice, True)

    def resume_writing(self):
        plain_paused(self.splice, False)


def reset(transport: asyncio.Transport) -> None:
    """Close with a TCP reset, not a FIN: what the other end must not take for a whole stream."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_NONE)
        except OSError:
            pass
    transport.abort()


def plain_paused(splice: Splice, paused: bool) -> None:
    """The work connection's buffer filled (or drained): hold (or go on reading) the plain half."""
    t = splice.plain
    if t is not None and not t.is_closing():
        t.pause_reading() if paused else t.resume_reading()
