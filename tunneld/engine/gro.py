"""One TCP flow's in-order segments, collected to go to the kernel as one super-packet: GRO
done by us, for plain TCP (offload.py) and for TCP inside flannel's VXLAN (tunnel_merge.py).

A segment joins its flow's first only if its headers repeat the first's in everything but
what varies per segment (`vary`: lengths, ids, checksums, the sequence number; and PSH),
as the kernel's GRO asks: TOS, DF, TTL, addresses, ports, ack, data offset, flags, window,
options, and in a tunnel the outer headers too. The headers are compared as one integer
under a mask, one step for all of it.
"""

from __future__ import annotations

import struct

MAX_SEGMENTS = 64
ACK = 0x10  # TCP flags: a segment that may start a flow carries ACK (and PSH) only
PSH = 0x08
_I = struct.Struct("!I")
_masks: dict[tuple, int] = {}


def header_mask(h: int, vary: tuple, flags_at: int) -> int:
    """Headers of h bytes as one integer: ones where a later segment must repeat the first."""
    key = (h, vary, flags_at)
    m = _masks.get(key)
    if m is None:
        b = bytearray(b"\xff" * h)
        for i in vary:
            b[i] = 0
        b[flags_at] = 0xFF & ~PSH
        m = _masks[key] = int.from_bytes(b, "big")
    return m


class Flow:
    """start: where the IP packet begins in `first` (after a PARTIAL header, in a tunnel);
    th: the (inner) TCP header's offset; h: where the payload begins; limit: the largest
    IPv4 total length the merged packet may reach."""

    __slots__ = ("first", "parts", "seq", "size", "total", "closed", "psh", "h", "th", "limit", "mask", "ref")

    def __init__(self, packet: bytes, start: int, th: int, h: int, limit: int, vary: tuple):
        size = len(packet) - h
        self.first = packet
        self.h = h
        self.th = th
        self.limit = limit
        self.parts = [memoryview(packet)[h:]]
        self.seq = (_I.unpack_from(packet, th + 4)[0] + size) & 0xFFFFFFFF
        self.size = size
        self.total = len(packet) - start
        self.closed = self.psh = bool(packet[th + 13] & PSH)  # PSH: the sender's write ends here
        self.mask = mask = header_mask(h, vary, th + 13)
        self.ref = int.from_bytes(packet[:h], "big") & mask

    def join(self, packet: bytes) -> bool:
        """packet, if it is the flow's next segment and fits: True once it has joined."""
        h = self.h
        size = len(packet) - h
        if (0 < size <= self.size and _I.unpack_from(packet, self.th + 4)[0] == self.seq
                and int.from_bytes(packet[:h], "big") & self.mask == self.ref
                and self.total + size <= self.limit and len(self.parts) < MAX_SEGMENTS):
            self.parts.append(memoryview(packet)[h:])
            self.seq = (self.seq + size) & 0xFFFFFFFF
            self.total += size
            flags = packet[self.th + 13]
            if size < self.size or flags & PSH:
                self.closed = True
                self.psh = bool(flags & PSH)
            return True
        return False
