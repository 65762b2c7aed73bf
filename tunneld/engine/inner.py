"""The packets inside the tunnel, IPv4 and IPv6: whom they go to, whom they may come
from, and their TCP MSS. Pure; shared by the node engine (node.py) and its workers
(lanes.py).

An overlay IPv6 address is the network's prefix with the node's IPv4 overlay address in
its last 32 bits (control/overlay6.py), so the first 12 bytes of every node's address are
the same, and the last 4 are the key the data path already finds peers by:

    IPv6 header   0      4      6    7    8               24              40
                  | vtf  | plen | nh | hl | source (16)    | dest (16)     |
    overlay address   [ prefix: 12 bytes ][ IPv4 overlay address: 4 bytes ]

  prefix_of(network6)          the 12 bytes, or None (a network without IPv6)
  destination6(packet, prefix) the peer's IPv4 address (4 bytes) an IPv6 packet to an
                               overlay address is for, or None
  route(packet, prefix, peers, table, table6)  (the peer a packet from tunneld0 goes to, or
                               None; whether it is IPv6, None for no IP packet at all): by
                               its address (IPv6: the IPv4 one inside), else by a prefix we
                               accept from the peer (routes.py, a table per family)
  from_peer(packet, addr, sources, prefix, sources6)  the inner-source check: an IPv4
                               packet from the peer's address or a prefix we accept from it,
                               or an IPv6 packet from the peer's IPv6 overlay address or an
                               IPv6 prefix we accept from it
  clamped(packet, v6, mss, vxlan_mss)  a TCP SYN's MSS cut to what the path carries (mss.py);
                               an IPv6 segment carries IPV6_EXTRA bytes less than IPv4's
"""

from __future__ import annotations

import ipaddress

from .mss import clamp, clamp6
from .routes import longest, within

IPV6_EXTRA = 20  # an IPv6 header's 40 bytes against IPv4's 20


def prefix_of(network6: str | None) -> bytes | None:
    if not network6:
        return None
    return ipaddress.IPv6Network(network6).network_address.packed[:12]


def destination6(packet: bytes, prefix: bytes | None) -> bytes | None:
    if prefix is None or len(packet) < 40 or packet[0] >> 4 != 6 or packet[24:36] != prefix:
        return None
    return packet[36:40]


def route(packet: bytes, prefix: bytes | None, peers: dict, table: list, table6: list) -> tuple:
    if packet and packet[0] >> 4 == 6:
        peer = peers.get(destination6(packet, prefix))
        if peer is None and table6 and len(packet) >= 40:
            peer = longest(table6, packet[24:40])
        return peer, True
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None, None
    peer = peers.get(packet[16:20])
    if peer is None and table:
        peer = longest(table, packet[16:20])
    return peer, False


def from_peer(packet: bytes, addr: bytes, sources, prefix: bytes | None, sources6=()) -> bool:
    if packet[0] >> 4 == 4:
        return len(packet) >= 20 and (packet[12:16] == addr or bool(sources and within(packet[12:16], sources)))
    if len(packet) < 40:
        return False
    return (prefix is not None and packet[8:20] == prefix and packet[20:24] == addr) or bool(
        sources6 and within(packet[8:24], sources6))


def clamped(packet: bytes, v6: bool, mss: int, vxlan_mss: int) -> bytes:
    if v6:
        return clamp6(packet, mss - IPV6_EXTRA)
    if packet[9] == 6 or packet[9] == 17:
        return clamp(packet, mss, vxlan_mss)
    return packet
