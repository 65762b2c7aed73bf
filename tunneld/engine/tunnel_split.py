"""UDP-tunnel super-packets from the TUN device: flannel's VXLAN, handed over whole.

Where the kernel offers UDP-tunnel segmentation on TUN (TUN_F_UDP_TUNNEL_GSO, Linux 6.17
on), a VXLAN device on tunneld0 (flannel.1) no longer cuts a pod's TCP stream into
VXLAN packets one by one before they reach us: one read brings up to 64 KB, behind the
24-byte virtio-net header of virtio_net_hdr_v1_hash_tunnel:

  0        2          4          6            8             10        12          20      22       24
  +-------+----------+----------+------------+-------------+---------+-----------+-------+--------+
  | flags | gso_type | hdr_len  | gso_size   | csum_start  | csum_off| (buffers, | outer | inner  |
  |       | 0x21     |          | inner MSS  | inner TCP   | 16      |  hash: 0) | th    | nh     |
  +-------+----------+----------+------------+-------------+---------+-----------+-------+--------+
  flags 1 NEEDS_CSUM (the inner TCP checksum), | 8 UDP_TUNNEL_CSUM (the outer UDP one too);
  gso_type 0x20 UDP_TUNNEL_IPV4 | 1 TCPV4; outer_th: the outer UDP header's offset;
  inner_nh: the inner IPv4 header's (after VXLAN's 8 bytes and the inner Ethernet's 14).

  outer IPv4 | UDP 8472 | VXLAN | Ethernet | inner IPv4 | TCP | payload of n * gso_size

split_udp_tunnel4() cuts it into the VXLAN packets the kernel would have sent, each whole
on the wire under its own AEAD tag: outer and inner IPv4 lengths, ids and header
checksums, the outer UDP length, the TCP sequence number and flags per segment. The
outer UDP checksum goes as zero, which IPv4 allows (the tag protects every byte); the
inner TCP checksum goes partial, as the receiver's kernel completes it (offload.py).

The far side writes these packets one by one: the kernel (6.18) takes UDP-tunnel
super-packets only from a TAP device, whose packets start with an Ethernet header
(virtio_net_hdr_tnl_to_skb wants the outer transport header at 34 bytes or more).
"""

from __future__ import annotations

import struct

from ..drops import Drop
from ..proto.wire import PARTIAL

VNET_TNL_LEN = 24
GSO_UDP_TUNNEL_IPV4 = 0x20
F_UDP_TUNNEL_CSUM = 8
_TNL = struct.Struct("<HH")  # outer_th_offset, inner_nh_offset: little-endian, as virtio 1.x
_H = struct.Struct("!H")
_HH = struct.Struct("!HH")
_I = struct.Struct("!I")
_PARTIAL = struct.Struct("!BHH")
_CWR = 0x80
_PSH_FIN = 0x09


def tunnel_offsets(buf: bytes) -> tuple[int, int]:
    return _TNL.unpack_from(buf, 20)


def _sum(hdr, start: int, end: int) -> int:
    return sum(struct.unpack_from(f"!{(end - start) // 2}H", hdr, start))


def split_udp_tunnel4(pkt: memoryview, gso_size: int, outer_th: int, inner_nh: int,
                      inner_th: int) -> tuple[list[bytes], str]:
    """A TCPv4-in-UDPv4-tunnel super-packet -> its packets, each behind a PARTIAL header that
    names the inner TCP checksum's place; or a drop reason."""
    n = len(pkt)
    if (n < inner_th + 20 or pkt[0] >> 4 != 4 or (pkt[0] & 0x0F) * 4 != outer_th or pkt[9] != 17
            or inner_nh < outer_th + 8 or pkt[inner_nh] >> 4 != 4 or pkt[inner_nh + 9] != 6
            or inner_th != inner_nh + (pkt[inner_nh] & 0x0F) * 4 or inner_th > 255):
        return [], Drop.TUN_GSO_MALFORMED
    h = inner_th + (pkt[inner_th + 12] >> 4) * 4
    if h > n or h < inner_th + 20:
        return [], Drop.TUN_GSO_MALFORMED
    hdr = bytearray(pkt[:h])
    o_id = _H.unpack_from(hdr, 4)[0]
    i_id = _H.unpack_from(hdr, inner_nh + 4)[0]
    seq = _I.unpack_from(hdr, inner_th + 4)[0]
    flags = hdr[inner_th + 13]
    for at in (2, 4, 10, inner_nh + 2, inner_nh + 4, inner_nh + 10, outer_th + 6):
        hdr[at : at + 2] = b"\x00\x00"  # what varies per segment; and no outer UDP checksum
    o_base = _sum(hdr, 0, outer_th)
    i_base = _sum(hdr, inner_nh, inner_th)
    p_base = _sum(hdr, inner_nh + 12, inner_nh + 20) + 6  # the inner pseudo-header, less its length
    prefix = _PARTIAL.pack(PARTIAL, inner_th, 16)
    at_flags, at_seq, at_check = inner_th + 13, inner_th + 4, inner_th + 16
    at_ulen, at_ilen, at_icsum = outer_th + 4, inner_nh + 2, inner_nh + 10
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
        c = o_base + total + o_id
        c = (c & 0xFFFF) + (c >> 16)
        pack_hh(hdr, 2, total, o_id)
        pack_h(hdr, 10, ~((c & 0xFFFF) + (c >> 16)) & 0xFFFF)
        pack_h(hdr, at_ulen, total - outer_th)
        inner = total - inner_nh
        c = i_base + inner + i_id
        c = (c & 0xFFFF) + (c >> 16)
        pack_hh(hdr, at_ilen, inner, i_id)
        pack_h(hdr, at_icsum, ~((c & 0xFFFF) + (c >> 16)) & 0xFFFF)
        pack_i(hdr, at_seq, seq & 0xFFFFFFFF)
        c = p_base + total - inner_th
        c = (c & 0xFFFF) + (c >> 16)
        pack_h(hdr, at_check, (c & 0xFFFF) + (c >> 16))  # partial: the pseudo-header's sum
        append(join((prefix, hdr, pkt[off : off + gso_size])))
        if off == h:
            hdr[at_flags] = middle
        o_id = (o_id + 1) & 0xFFFF
        i_id = (i_id + 1) & 0xFFFF
        seq += gso_size
    return out, ""
