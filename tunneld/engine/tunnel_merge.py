"""flannel's VXLAN back to the kernel whole: consecutive VXLAN packets of one pod TCP flow,
merged into one UDP-tunnel super-packet (GRO for a tunnel, done by us).

The sender cut a super-packet into VXLAN packets (tunnel_split.py); each arrives with its
inner TCP checksum partial and named in the DATA header (PARTIAL, offload.py):

  PARTIAL 5 | outer IPv4 20 | UDP 8 | VXLAN 8 | Ethernet 14 | inner IPv4 20 | TCP | payload

The receiving kernel takes a tunnel super-packet from TUN only where the outer transport
header starts at 34 bytes or more (virtio_net_hdr_tnl_to_skb() reckons an Ethernet header
before the outer IPv4 one, which a TUN device never has). So the merged packet's outer
IPv4 header carries 16 bytes of no-op options (IHL 9, the UDP header at 36); the kernel
reads past them, and the packet never leaves this host (flannel.1 takes it apart):

  0          20            36      44      52         66           86
  +----------+-------------+-------+-------+----------+------------+-----+----------------+
  | IPv4 0x49| NOP x 16    | UDP   | VXLAN | Ethernet | IPv4 total | TCP | n payloads ... |
  +----------+-------------+-------+-------+----------+------------+-----+----------------+
  24-byte virtio header: NEEDS_CSUM, gso_type UDP_TUNNEL_IPV4 | TCPV4, gso_size the first
  payload's, csum_start 86 (inner TCP) + 16, outer_th 36, inner_nh 66.

The outer UDP checksum goes as zero (IPv4 allows it; the AEAD tag protected every byte).
The kernel hands the whole to the VXLAN socket (a tunnel GSO packet is what it expects
there, as after a NIC's tunnel GRO), and flannel.1 passes the pod one TCP super-packet.
Only TCP segments with data and nothing but ACK (and PSH) merge, in order, with the same
headers but for what varies per segment, as the kernel's GRO asks; anything else goes
alone, as before.
"""

from __future__ import annotations

import struct

from ..proto.wire import PARTIAL_HEADER_LEN
from .checksum import ip_header, pseudo_sum
from .gro import ACK, PSH, Flow
from .tunnel_split import GSO_UDP_TUNNEL_IPV4

B = PARTIAL_HEADER_LEN  # the IP packet starts here
OUTER_TH, INNER_NH, INNER_TH = 20, 50, 70  # as sent: no options anywhere
PAD = 16
NOPS = b"\x01" * PAD
_HDR = struct.Struct("=BBHHHH10x")  # virtio_net_hdr_v1_hash_tunnel, less its last two fields (_TNL)
_TNL = struct.Struct("<HH")
_H = struct.Struct("!H")
NEEDS_CSUM = 1
GSO_TCPV4 = 1
MAX_SUPER = 65535 - PAD  # the merged outer IPv4 total length stays a 16-bit number


def _first(p: bytes) -> bool:
    """A PARTIAL-headed VXLAN packet whose inner TCP segment may start a flow: no IP options
    or fragments, the inner checksum's place where it belongs, data with only ACK (and PSH)."""
    return (len(p) > B + INNER_TH + 20 and p[B] == 0x45 and p[B + 9] == 17 and not (p[B + 6] & 0x3F or p[B + 7])
            and p[1] == 0 and p[2] == INNER_TH and p[3] == 0 and p[4] == 16
            and p[B + 48] == 8 and p[B + 49] == 0 and p[B + 50] == 0x45 and p[B + 59] == 6
            and not (p[B + 56] & 0x3F or p[B + 57])
            and (p[B + 83] == ACK or p[B + 83] == ACK | PSH))


# What a later packet of a flow may change (gro.py): the outer IPv4 total length, id and
# checksum, the UDP length and checksum, the inner total length, id and checksum, the TCP
# sequence number and checksum. All else must repeat the first's: the PARTIAL header, the
# outer headers, VXLAN and the inner Ethernet header too.
_VARY = tuple(B + i for i in (2, 3, 4, 5, 10, 11, 24, 25, 26, 27, 52, 53, 54, 55, 60, 61, 74, 75, 76, 77, 86, 87))


def add(flows: dict, items: list, p: bytes) -> bool:
    """One VXLAN packet joins its flow's super-packet or starts one; False for one that
    goes alone (the caller's), which ends its flow."""
    key = p[B + 12 : B + 24]  # outer addresses and ports: VXLAN's source port follows the inner flow
    flow = flows.get(key)
    if flow is not None and not flow.closed and flow.join(p):
        return True
    if _first(p):
        h = B + INNER_TH + (p[B + 82] >> 4) * 4
        if len(p) > h and h >= B + INNER_TH + 20:
            flow = flows[key] = Flow(p, B, B + INNER_TH, h, MAX_SUPER, _VARY)
            items.append(flow)
            return True
    flow = flows.pop(key, None)  # keep the flow's order: what follows starts anew
    if flow is not None:
        flow.closed = True
    return False


def merge(flow: Flow, single) -> list:
    """The writev buffers of a flow: the 24-byte header, the headers, the payloads; a flow
    of one packet as single() writes it."""
    if len(flow.parts) == 1:
        return single(flow.first)
    h = flow.h - B
    hdr = bytearray(flow.first[B : B + OUTER_TH])
    hdr += NOPS
    hdr += flow.first[B + OUTER_TH : flow.h]
    total = flow.total + PAD
    hdr[0] = 0x45 + PAD // 4
    _H.pack_into(hdr, 2, total)
    hdr[10:12] = b"\x00\x00"
    _H.pack_into(hdr, 10, ip_header(hdr[: OUTER_TH + PAD]))
    th, nh, ith = OUTER_TH + PAD, INNER_NH + PAD, INNER_TH + PAD
    _H.pack_into(hdr, th + 4, total - th)
    hdr[th + 6 : th + 8] = b"\x00\x00"
    _H.pack_into(hdr, nh + 2, total - nh)
    hdr[nh + 10 : nh + 12] = b"\x00\x00"
    _H.pack_into(hdr, nh + 10, ip_header(hdr[nh : nh + 20]))
    if flow.psh:
        hdr[ith + 13] |= PSH
    _H.pack_into(hdr, ith + 16, pseudo_sum(hdr[nh:], 6, total - ith))
    vnet = _HDR.pack(NEEDS_CSUM, GSO_UDP_TUNNEL_IPV4 | GSO_TCPV4, h + PAD, flow.size, ith, 16) + _TNL.pack(th, nh)
    return [vnet, hdr, *flow.parts]
