"""Cutting a TCP super-packet into the segments the kernel would have sent, in one place.

The super-packets the TUN device hands over end in one TCP stream cut at gso_size: over
IPv4 (cut), or over IPv6 (cut6: only the payload length, sequence number and flags vary;
no header checksum, and the TCP checksum stays the partial one the receiver completes):
a plain one (offload.py), and one inside a UDP tunnel, flannel's VXLAN (tunnel_split.py):

  [outer IPv4 | UDP | VXLAN | Ethernet] | IPv4 at nh | TCP at th | payload ... (h: headers end)

Per segment only what varies is written, one loop turn each (the hot path): the IPv4
total length, id and header checksum (both headers' in a tunnel), the outer UDP length,
the TCP sequence number, and the flags: CWR stays on the first segment, PSH and FIN on
the last, as the kernel's own segmentation does. In a tunnel the outer UDP checksum goes
as zero (IPv4 allows it; the AEAD tag protects every byte) and the TCP checksum as the
pseudo-header's partial sum, for the receiving kernel to complete (offload.py).
"""

from __future__ import annotations

import struct

_H = struct.Struct("!H")
_HH = struct.Struct("!HH")
_I = struct.Struct("!I")
_CWR = 0x80
_PSH_FIN = 0x09


def _words(hdr, start: int, end: int) -> int:
    return sum(struct.unpack_from(f"!{(end - start) // 2}H", hdr, start))


def cut(pkt: memoryview, gso_size: int, nh: int, th: int, h: int, outer_th: int = -1,
        prefix: bytes = b"") -> list[bytes]:
    """pkt's segments, each behind prefix. outer_th: the outer UDP header's offset in a
    tunnel (whose outer IPv4 header starts at 0), or -1 for none. Offsets are the caller's
    to have checked."""
    n = len(pkt)
    hdr = bytearray(pkt[:h])
    seq = _I.unpack_from(hdr, th + 4)[0]
    ident = _H.unpack_from(hdr, nh + 4)[0]
    flags = hdr[th + 13]
    hdr[nh + 2 : nh + 6] = b"\x00\x00\x00\x00"  # total length and id vary per segment
    hdr[nh + 10 : nh + 12] = b"\x00\x00"
    base = _words(hdr, nh, th)
    tunnel = outer_th >= 0
    o_id = o_base = p_base = 0
    if tunnel:
        o_id = _H.unpack_from(hdr, 4)[0]
        hdr[2:6] = b"\x00\x00\x00\x00"
        hdr[10:12] = b"\x00\x00"
        hdr[outer_th + 6 : outer_th + 8] = b"\x00\x00"  # no outer UDP checksum
        o_base = _words(hdr, 0, outer_th)
        p_base = _words(hdr, nh + 12, nh + 20) + 6  # the pseudo-header, less its length
    at_flags, at_seq, at_check, at_ulen = th + 13, th + 4, th + 16, outer_th + 4
    last = n - gso_size
    total = h + gso_size
    hdr[at_flags] = flags & ~_PSH_FIN if last > h else flags
    middle = flags & ~(_CWR | _PSH_FIN)
    pack_hh, pack_h, pack_i, join = _HH.pack_into, _H.pack_into, _I.pack_into, b"".join
    out = []
    append = out.append
    for off in range(h, n, gso_size):
        if off >= last:
            total = h + n - off
            hdr[at_flags] = flags & ~_CWR if off > h else flags
        if tunnel:
            c = o_base + total + o_id
            c = (c & 0xFFFF) + (c >> 16)
            pack_hh(hdr, 2, total, o_id)
            pack_h(hdr, 10, ~((c & 0xFFFF) + (c >> 16)) & 0xFFFF)
            pack_h(hdr, at_ulen, total - outer_th)
            c = p_base + total - th
            c = (c & 0xFFFF) + (c >> 16)
            pack_h(hdr, at_check, (c & 0xFFFF) + (c >> 16))
            o_id = (o_id + 1) & 0xFFFF
        inner = total - nh
        c = base + inner + ident
        c = (c & 0xFFFF) + (c >> 16)
        pack_hh(hdr, nh + 2, inner, ident)
        pack_h(hdr, nh + 10, ~((c & 0xFFFF) + (c >> 16)) & 0xFFFF)
        pack_i(hdr, at_seq, seq & 0xFFFFFFFF)
        append(join((prefix, hdr, pkt[off : off + gso_size])))
        if off == h:
            hdr[at_flags] = middle
        ident = (ident + 1) & 0xFFFF
        seq += gso_size
    return out


def cut6(pkt: memoryview, gso_size: int, h: int) -> list[bytes]:
    """An IPv6 TCP super-packet's segments (TCP right after the fixed header, at 40; its
    headers end at h)."""
    n = len(pkt)
    hdr = bytearray(pkt[:h])
    seq = _I.unpack_from(hdr, 44)[0]
    flags = hdr[53]
    last = n - gso_size
    hdr[53] = flags & ~_PSH_FIN if last > h else flags
    middle = flags & ~(_CWR | _PSH_FIN)
    pack_h, pack_i, join = _H.pack_into, _I.pack_into, b"".join
    out = []
    size = h - 40 + gso_size
    for off in range(h, n, gso_size):
        if off >= last:
            size = n - off + h - 40
            hdr[53] = flags & ~_CWR if off > h else flags
        pack_h(hdr, 4, size)
        pack_i(hdr, 44, seq & 0xFFFFFFFF)
        out.append(join((hdr, pkt[off : off + gso_size])))
        if off == h:
            hdr[53] = middle
        seq += gso_size
    return out
