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

split_udp_tunnel4() checks the offsets and cuts it (segment.py) into the VXLAN packets the
kernel would have sent, each whole on the wire under its own AEAD tag, behind a PARTIAL
header that names the inner TCP checksum's place (offload.py).

The far side merges them back into one super-packet for its kernel (tunnel_merge.py).
"""

from __future__ import annotations

import struct

from ..drops import Drop
from ..proto.wire import PARTIAL
from .segment import cut

VNET_TNL_LEN = 24
GSO_UDP_TUNNEL_IPV4 = 0x20
F_UDP_TUNNEL_CSUM = 8
_TNL = struct.Struct("<HH")  # outer_th_offset, inner_nh_offset: little-endian, as virtio 1.x
_PARTIAL = struct.Struct("!BHH")


def tunnel_offsets(buf: bytes) -> tuple[int, int]:
    return _TNL.unpack_from(buf, 20)


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
    return cut(pkt, gso_size, inner_nh, inner_th, h, outer_th, _PARTIAL.pack(PARTIAL, inner_th, 16)), ""
