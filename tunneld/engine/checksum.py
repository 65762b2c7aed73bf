"""The Internet checksum (RFC 1071), the one implementation the data path uses.

The one's-complement sum of 16-bit words does not depend on how the words are
grouped: summing the whole buffer as one big integer modulo 0xFFFF gives the same
residue (2**16 = 1 mod 0xFFFF), and is far cheaper in Python than a loop of words.
The only difference is that this residue calls zero what the folded sum calls
0xFFFF; sum16() puts that back, so that callers see the folded sum of RFC 1071.
"""

from __future__ import annotations

import struct

_H = struct.Struct("!H")


def fold(s: int) -> int:
    """Fold a sum of 16-bit words (< 2**32) into 16 bits with end-around carry."""
    s = (s & 0xFFFF) + (s >> 16)
    return (s & 0xFFFF) + (s >> 16)


def sum16(data) -> int:
    """The folded (not complemented) one's-complement sum of data's big-endian 16-bit
    words, an odd last byte padded with zero."""
    raw = bytes(data)
    if len(raw) & 1:
        raw += b"\x00"
    s = int.from_bytes(raw, "big") % 0xFFFF
    return s if s or not raw.strip(b"\x00") else 0xFFFF


def finish(s: int) -> int:
    """The checksum field for a folded sum: its complement."""
    return ~s & 0xFFFF


def pseudo_sum(packet, proto: int, length: int) -> int:
    """Folded sum of an IPv4 packet's pseudo-header for a TCP or UDP segment of `length`
    bytes: what a partial checksum (NEEDS_CSUM) holds until the kernel completes it."""
    src = int.from_bytes(packet[12:16], "big")
    dst = int.from_bytes(packet[16:20], "big")
    return fold((src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + proto + length)


def ip_header(hdr) -> int:
    """The checksum field of an IPv4 header whose own checksum field is zero."""
    return finish(sum16(hdr))


def l4(packet, ip: int, l4_start: int, end: int, proto: int) -> int:
    """The TCP or UDP checksum field of the segment packet[l4_start:end] inside the IPv4
    packet at offset ip, its own checksum field zeroed beforehand."""
    s = pseudo_sum(packet[ip:], proto, end - l4_start) + sum16(packet[l4_start:end])
    return finish(fold(s))


def pseudo_sum6(packet, proto: int, length: int) -> int:
    """Folded sum of an IPv6 packet's pseudo-header (RFC 8200: the 16-byte source and
    destination, the upper-layer length and the next header), as pseudo_sum for IPv4."""
    return fold(sum16(packet[8:40]) + (length >> 16) + (length & 0xFFFF) + proto)


def l4_v6(packet, l4_start: int, end: int, proto: int) -> int:
    """The same as l4, inside an IPv6 packet (at offset 0)."""
    return finish(fold(pseudo_sum6(packet, proto, end - l4_start) + sum16(packet[l4_start:end])))


def pack(value: int) -> bytes:
    return _H.pack(value)
