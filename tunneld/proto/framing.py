"""Message framing on a TCP stream (the fallback transport to the relay).

  +--------------------------+---------------------------------+
  | length (2, big-endian)   | message (length bytes, 1..65535)|
  +--------------------------+---------------------------------+

The same messages as on UDP (wire.py), one per frame. A zero length is a
protocol error: nothing legitimate is empty.
"""

from __future__ import annotations

import struct

from .errors import ProtocolError

MAX_FRAME = 0xFFFF
_LEN = struct.Struct("!H")


def frame(msg: bytes) -> bytes:
    return _LEN.pack(len(msg)) + msg


class Deframer:
    """Feed it stream bytes in any pieces; it returns the whole messages they complete."""

    __slots__ = ("_buf",)

    def __init__(self):
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            n = (buf[pos] << 8) | buf[pos + 1]
            if n == 0:
                self._buf = bytearray()
                raise ProtocolError("zero-length frame")
            if end - pos - 2 < n:
                break
            out.append(bytes(buf[pos + 2 : pos + 2 + n]))
            pos += 2 + n
        if pos:
            del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a frame (at most MAX_FRAME + 1)."""
        return len(self._buf)
