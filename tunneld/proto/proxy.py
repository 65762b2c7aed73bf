"""PROXY protocol v2 (haproxy.org's proxy-protocol.txt): the header a published TCP
connection's service gets first when the publish asks for it (proxy-protocol = 2), so
that it sees the client's address rather than the node's.

   0                 12     13     14      16
   +-----------------+------+------+-------+---------+---------+-------+-------+
   | signature (12)  | 0x21 | 0x11 | 0x000C| src (4) | dst (4) | sport | dport |
   +-----------------+------+------+-------+---------+---------+-------+-------+
     \\r\\n\\r\\n\\0\\r\\nQUIT\\n  v2,    TCP    length   IPv4 addresses, ports big-endian
                       PROXY  over
                              IPv4
"""

from __future__ import annotations

import ipaddress

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def header(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """The v2 header for a TCP connection from src to dst (IPv4 address, port)."""
    return (SIGNATURE + bytes((0x21, 0x11, 0, 12)) + ipaddress.IPv4Address(src[0]).packed
            + ipaddress.IPv4Address(dst[0]).packed + src[1].to_bytes(2, "big") + dst[1].to_bytes(2, "big"))


def parse(data: bytes) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """What header() wrote: (src, dst), or None (for tests and tools)."""
    if len(data) < 28 or not data.startswith(SIGNATURE) or data[12:16] != bytes((0x21, 0x11, 0, 12)):
        return None
    return ((str(ipaddress.IPv4Address(data[16:20])), int.from_bytes(data[24:26], "big")),
            (str(ipaddress.IPv4Address(data[20:24])), int.from_bytes(data[26:28], "big")))
