"""TUN offload: large TCP segments in from the kernel, split; segments out to it, merged.

With IFF_VNET_HDR and TUNSETOFFLOAD the TUN device exchanges packets up to 64 KB
with the kernel, each behind a virtio-net header, so that one read or write
carries what would otherwise be dozens. On the wire every datagram still holds
one MTU-sized IP packet under its own AEAD tag, so one lost datagram costs one
segment, never a whole batch.

virtio-net header (10 bytes, host byte order), before every packet on the TUN fd:

  +---------+----------+-----------+-----------+------------+-------------+
  | flags 1 | gso_type | hdr_len 2 | gso_size 2| csum_start | csum_offset |
  +---------+----------+-----------+-----------+------------+-------------+
  flags 1 = NEEDS_CSUM: the L4 checksum at csum_start + csum_offset holds only
  the pseudo-header sum; gso_type 1 = TCPV4, 4 = TCPV6 (| 0x80 ECN): split into gso_size.

  split(buf)          read side: header + packet -> MTU-sized IPv4 packets
  Coalescer.add(pkt)  write side: consecutive in-order TCP segments of a flow are
  Coalescer.flush()   merged into one TCPV4 super-packet (GRO done by us); every
                      other packet goes alone.

Checksums. A segment split here keeps the partial checksum of its super-packet,
as the kernel hands it to us: TCP/UDP checksums inside the tunnel are not
computed by the sender, because the AEAD tag already protects every byte
(virtio-net between VMs works the same way). The receiver writes every TCP
packet, and every UDP packet with a checksum, as NEEDS_CSUM over a freshly
computed pseudo-header sum: the kernel trusts it for local delivery and fills
in the checksum itself when it forwards the packet on. A partial checksum
anywhere but the packet's own TCP/UDP header (inside an encapsulated packet) is
sent with its place (in the DATA header, wire.py), and the receiver hands it on
as NEEDS_CSUM at that place, so no checksum is computed in Python.
"""

from __future__ import annotations

import struct

from ..drops import Drop
from ..proto.wire import PARTIAL, PARTIAL_HEADER_LEN
from .checksum import finish, ip_header, pseudo_sum, pseudo_sum6, sum16
from .segment import cut, cut6
from . import tunnel_merge
from .gro import ACK, PSH, Flow
from .tunnel_split import GSO_UDP_TUNNEL_IPV4, VNET_TNL_LEN, split_udp_tunnel4, tunnel_offsets

VNET_HDR_LEN = 10
NEEDS_CSUM = 1
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_TCPV6 = 4
GSO_ECN = 0x80
_VNET = struct.Struct("=BBHHHH")
_H = struct.Struct("!H")
_I = struct.Struct("!I")
_PARTIAL = struct.Struct("!BHH")

PLAIN_HDR = _VNET.pack(0, GSO_NONE, 0, 0, 0, 0)
MAX_SUPER = 65535  # an IPv4 total length


def split(buf: bytes, vnet_len: int = VNET_HDR_LEN) -> tuple[list[bytes], str]:
    """One read from the TUN device -> its IP packets, and a drop reason when it has none.
    vnet_len: the virtio-net header's length, 24 where UDP-tunnel offload is on (tunnel_split.py)."""
    if len(buf) <= vnet_len + 20:
        return [], Drop.TUN_SHORT
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = _VNET.unpack_from(buf)
    gso_type &= ~GSO_ECN
    if gso_type == GSO_NONE:
        packet = buf[vnet_len:]
        if flags & NEEDS_CSUM:
            packet = _complete(packet, csum_start, csum_offset)
        return [packet], ""
    if gso_size == 0:
        return [], Drop.TUN_GSO_UNSUPPORTED
    if gso_type == GSO_TCPV4:
        return _split_tcp4(memoryview(buf)[vnet_len:], gso_size)
    if gso_type == GSO_TCPV6:
        return _split_tcp6(memoryview(buf)[vnet_len:], gso_size)
    if gso_type == GSO_UDP_TUNNEL_IPV4 | GSO_TCPV4 and vnet_len >= VNET_TNL_LEN:
        outer_th, inner_nh = tunnel_offsets(buf)
        return split_udp_tunnel4(memoryview(buf)[vnet_len:], gso_size, outer_th, inner_nh, csum_start)
    return [], Drop.TUN_GSO_UNSUPPORTED


def _complete(packet: bytes, start: int, offset: int) -> bytes:
    """A partial checksum in the packet's own TCP/UDP header goes as it is (the receiver
    completes it); one deeper in goes with its place (wire.PARTIAL)."""
    if packet[0] >> 4 == 6:  # IPv6: TCP or UDP right after the fixed header (offload._single6)
        ihl, proto = 40, packet[6]
    else:
        ihl, proto = (packet[0] & 0x0F) * 4, packet[9]
    if start == ihl and ((proto == 6 and offset == 16) or (proto == 17 and offset == 6)):
        return packet
    if start + offset + 2 > len(packet) or start > 255 or offset > 255:
        return _complete_here(packet, start, offset)
    return _PARTIAL.pack(PARTIAL, start, offset) + packet


def unpartial(packet: bytes) -> tuple[bytes, bytes]:
    """(the IP packet, the DATA header's 3 bytes after its type: the deeper checksum's place,
    or nothing) of what split() gave; the engines seal the first with the second."""
    if packet and packet[0] == PARTIAL and len(packet) > PARTIAL_HEADER_LEN:
        return packet[PARTIAL_HEADER_LEN:], bytes((packet[2], packet[4], 0))  # places stay below 256
    return packet, b""


def _complete_here(packet: bytes, start: int, offset: int) -> bytes:
    """The rare place the header cannot name: finish the checksum in software."""
    at = start + offset
    if at + 2 > len(packet) or start >= len(packet):
        return packet
    b = bytearray(packet)
    b[at : at + 2] = _H.pack(finish(sum16(b[start:])) or 0xFFFF)  # the field holds the partial sum
    return bytes(b)


def _split_tcp4(pkt: memoryview, gso_size: int) -> tuple[list[bytes], str]:
    n = len(pkt)
    ihl = (pkt[0] & 0x0F) * 4
    if pkt[0] >> 4 != 4 or ihl < 20 or pkt[9] != 6 or n < ihl + 20:
        return [], Drop.TUN_GSO_MALFORMED
    h = ihl + (pkt[ihl + 12] >> 4) * 4
    if h > n or h < ihl + 20:
        return [], Drop.TUN_GSO_MALFORMED
    return cut(pkt, gso_size, 0, ihl, h), ""


def _split_tcp6(pkt: memoryview, gso_size: int) -> tuple[list[bytes], str]:
    n = len(pkt)
    if pkt[0] >> 4 != 6 or pkt[6] != 6 or n < 60:  # TCP right after the fixed header, nothing else
        return [], Drop.TUN_GSO_MALFORMED
    h = 40 + (pkt[52] >> 4) * 4
    if h > n or h < 60:
        return [], Drop.TUN_GSO_MALFORMED
    return cut6(pkt, gso_size, h), ""


# What a later segment of a flow may change in its headers (gro.py): the IPv4 total length,
# id and checksum, the TCP sequence number and checksum; over IPv6 the payload length, the
# TCP sequence number and checksum.
_VARY = (2, 3, 4, 5, 10, 11, 24, 25, 26, 27, 36, 37)
_VARY6 = (4, 5, 44, 45, 46, 47, 56, 57)


class Coalescer:
    """Collects the packets of one batch for the TUN device; flush() returns the writes.

    A write is a list of buffers for os.writev: the virtio-net header, then the packet."""

    def __init__(self, tunnel: bool = False):
        self.items: list = []  # Flow or a finished write, in arrival order
        self.flows: dict[bytes, Flow] = {}
        self.tunnel = tunnel  # the device takes UDP-tunnel super-packets (tunnel_merge.py)
        self.tflows: dict = {}

    def add(self, packet: bytes) -> None:
        # The hot case first, in as few steps as Python allows: the next segment of a flow
        # (its key: addresses and ports, IPv4's 12 bytes or IPv6's 36).
        if packet[0] >> 4 == 6:
            key, tcp = packet[8:44], packet[6] == 6
        else:
            key, tcp = packet[12:24], packet[9] == 6
        flow = self.flows.get(key) if tcp else None
        if flow is not None and not flow.closed and flow.join(packet):
            return
        # The first segment of a flow: an IPv4 packet without options or fragmentation (or
        # an IPv6 one, TCP right after its fixed header) carrying a TCP segment with data
        # and only ACK (and PSH).
        if (packet[0] == 0x45 and tcp and not (packet[6] & 0x3F or packet[7])
                and len(packet) >= 40 and (packet[33] == ACK or packet[33] == ACK | PSH)):
            h = 20 + (packet[32] >> 4) * 4
            if len(packet) > h >= 40:
                flow = self.flows[key] = Flow(packet, 0, 20, h, MAX_SUPER, _VARY)
                self.items.append(flow)
                return
        elif (tcp and packet[0] >> 4 == 6 and len(packet) >= 60
              and (packet[53] == ACK or packet[53] == ACK | PSH)):
            h = 40 + (packet[52] >> 4) * 4
            if len(packet) > h >= 60:
                flow = self.flows[key] = Flow(packet, 0, 40, h, MAX_SUPER, _VARY6)
                self.items.append(flow)
                return
        if packet[0] == PARTIAL:
            if self.tunnel and tunnel_merge.add(self.tflows, self.items, packet):
                return
            self.items.append(single(packet))
            return
        if tcp:
            flow = self.flows.pop(key, None)  # keep the flow's order: what follows starts anew
            if flow is not None:
                flow.closed = True
        self.items.append(single(packet))

    def flush(self) -> list[list]:
        out = []
        for item in self.items:
            if item.__class__ is Flow:
                first = item.first[0]
                out.append(tunnel_merge.merge(item, single) if first == PARTIAL else _merge(item))
            else:
                out.append(item)
        self.items = []
        self.flows = {}
        self.tflows = {}
        return out


def single(packet: bytes) -> list:
    """One packet as it goes to the TUN device: TCP/UDP as NEEDS_CSUM (see the top)."""
    if packet[0] == PARTIAL:
        _, start, offset = _PARTIAL.unpack_from(packet)
        return [_VNET.pack(NEEDS_CSUM, GSO_NONE, 0, 0, start, offset), memoryview(packet)[PARTIAL_HEADER_LEN:]]
    if packet[0] >> 4 == 6:
        return _single6(packet)
    ihl = (packet[0] & 0x0F) * 4
    proto = packet[9]
    if packet[6] & 0x3F or packet[7] or ihl < 20:  # a fragment: its checksum spans others
        return [PLAIN_HDR, packet]
    if proto == 6:
        at = ihl + 16
    elif proto == 17:
        at = ihl + 6
        if len(packet) >= at + 2 and packet[at] == 0 and packet[at + 1] == 0:
            return [PLAIN_HDR, packet]  # UDP without a checksum (VXLAN's, usually)
    else:
        return [PLAIN_HDR, packet]
    if len(packet) < at + 2:
        return [PLAIN_HDR, packet]
    mv = memoryview(packet)
    field = _H.pack(pseudo_sum(packet, proto, len(packet) - ihl))
    return [_VNET.pack(NEEDS_CSUM, GSO_NONE, 0, 0, ihl, at - ihl), mv[:at], field, mv[at + 2:]]


def _single6(packet: bytes) -> list:
    """An IPv6 packet: TCP, and UDP, right after the fixed header, as NEEDS_CSUM (IPv6 UDP
    always carries a checksum); anything else (extension headers, ICMPv6) as it is."""
    proto = packet[6]
    at = 56 if proto == 6 else 46 if proto == 17 else 0
    if not at or len(packet) < at + 2:
        return [PLAIN_HDR, packet]
    mv = memoryview(packet)
    field = _H.pack(pseudo_sum6(packet, proto, len(packet) - 40))
    return [_VNET.pack(NEEDS_CSUM, GSO_NONE, 0, 0, 40, at - 40), mv[:at], field, mv[at + 2:]]


def _merge(flow: Flow) -> list:
    """A flow's segments as one TCP super-packet (TCPV4, or TCPV6: IPv6's fixed header has no
    checksum, its payload length where IPv4 has its total length)."""
    first = flow.first
    if len(flow.parts) == 1:
        return single(first)
    h = len(first) - len(flow.parts[0])
    hdr = bytearray(first[:h])
    total = flow.total
    v6 = first[0] >> 4 == 6
    th = 40 if v6 else 20
    if v6:
        _H.pack_into(hdr, 4, total - 40)
    else:
        _H.pack_into(hdr, 2, total)
        hdr[10:12] = b"\x00\x00"
        _H.pack_into(hdr, 10, ip_header(hdr[:20]))
    if flow.psh:
        hdr[th + 13] |= PSH
    _H.pack_into(hdr, th + 16, (pseudo_sum6 if v6 else pseudo_sum)(hdr, 6, total - th))
    vnet = _VNET.pack(NEEDS_CSUM, GSO_TCPV6 if v6 else GSO_TCPV4, h, flow.size, th, 16)
    return [vnet, hdr, *flow.parts]
