"""TCP MSS clamping for SYNs that enter the tunnel, so that large writes never stall.

A host behind a node (a physical server routed through it, or a pod whose MTU was
set before a smaller node joined) may announce an MSS bigger than the overlay
carries; where ICMP "fragmentation needed" is filtered its connection then stalls
after the handshake. Clamping the SYN's MSS option, as routers do, avoids that.

  clamp(packet, limit, vxlan_limit)
    IPv4 / TCP SYN                                      MSS > limit       -> limit
    IPv4 / UDP dport 8472 / VXLAN / Ethernet / IPv4 / TCP SYN (flannel's pods)
                                                        MSS > vxlan_limit -> vxlan_limit
  clamp6(packet, limit)
    IPv6 / TCP SYN (no extension headers)               MSS > limit       -> limit
    (IPv6, issue 17: the data path does not call it yet)
It returns the packet itself when nothing changes (every non-SYN, the hot case:
a few index reads), else a copy with the option and the checksums rewritten.
SYNs are rare, so checksums are recomputed rather than patched.
"""

from __future__ import annotations

from . import checksum

VXLAN_PORT = b"\x21\x18"  # 8472, big-endian
_ETH_IPV4 = b"\x08\x00"
_VXLAN_INNER = 8 + 8 + 14  # UDP header, VXLAN header, inner Ethernet header
VXLAN_OVERHEAD = 20 + _VXLAN_INNER  # flannel's 50: what flannel.1's MTU is below its device's


def clamp(packet: bytes, limit: int, vxlan_limit: int) -> bytes:
    n = len(packet)
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or n < ihl + 20 or packet[6] & 0x1F or packet[7]:  # malformed, or not a first fragment
        return packet
    proto = packet[9]
    if proto == 6:
        if not packet[ihl + 13] & 0x02:
            return packet
        return _clamp_syn(packet, 0, limit, None)
    if proto == 17 and packet[ihl + 2 : ihl + 4] == VXLAN_PORT:
        inner = ihl + _VXLAN_INNER
        if n < inner + 40 or packet[inner - 2 : inner] != _ETH_IPV4 or packet[inner + 9] != 6:
            return packet
        inner_ihl = (packet[inner] & 0x0F) * 4
        if inner_ihl < 20 or n < inner + inner_ihl + 20 or not packet[inner + inner_ihl + 13] & 0x02:
            return packet
        if packet[inner + 6] & 0x1F or packet[inner + 7]:
            return packet
        return _clamp_syn(packet, inner, vxlan_limit, ihl)
    return packet


def clamp6(packet: bytes, limit: int) -> bytes:
    """An IPv6 TCP SYN's MSS cut to limit (an IPv6 path carries 20 bytes less than IPv4's)."""
    if len(packet) < 60 or packet[6] != 6 or not packet[53] & 0x02:
        return packet
    end = min(len(packet), 40 + int.from_bytes(packet[4:6], "big"))
    i = _mss_option(packet, 40, end)
    if i is None or int.from_bytes(packet[i + 2:i + 4], "big") <= limit:
        return packet
    buf = bytearray(packet)
    buf[i + 2:i + 4] = limit.to_bytes(2, "big")
    buf[56:58] = b"\x00\x00"
    buf[56:58] = checksum.pack(checksum.l4_v6(buf, 40, end, 6))
    return bytes(buf)


def _mss_option(packet: bytes, tcp: int, end: int) -> int | None:
    """Where the MSS option of the TCP header at tcp starts (None: it has none)."""
    options_end = min(end, tcp + (packet[tcp + 12] >> 4) * 4)
    i = tcp + 20
    while i < options_end:
        kind = packet[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= options_end or packet[i + 1] < 2:
            break
        if kind == 2 and packet[i + 1] == 4 and i + 4 <= options_end:
            return i
        i += packet[i + 1]
    return None


def _clamp_syn(packet: bytes, ip: int, limit: int, udp_ihl: int | None) -> bytes:
    """Clamp the MSS of the TCP SYN in the IPv4 packet at offset ip (inside a UDP datagram
    whose IPv4 header is udp_ihl long, or at the top when udp_ihl is None)."""
    tcp = ip + (packet[ip] & 0x0F) * 4
    end = min(len(packet), ip + int.from_bytes(packet[ip + 2 : ip + 4], "big"))
    i = _mss_option(packet, tcp, end)
    if i is None or int.from_bytes(packet[i + 2 : i + 4], "big") <= limit:
        return packet
    buf = bytearray(packet)
    buf[i + 2 : i + 4] = limit.to_bytes(2, "big")
    _tcp_checksum(buf, ip, tcp, end)
    if udp_ihl is not None:
        _udp_checksum(buf, udp_ihl)
    return bytes(buf)


def _tcp_checksum(buf: bytearray, ip: int, tcp: int, end: int) -> None:
    buf[tcp + 16 : tcp + 18] = b"\x00\x00"
    buf[tcp + 16 : tcp + 18] = checksum.pack(checksum.l4(buf, ip, tcp, end, 6))


def _udp_checksum(buf: bytearray, ihl: int) -> None:
    udp = ihl
    if buf[udp + 6 : udp + 8] == b"\x00\x00":
        return  # the sender did not checksum (Linux VXLAN's default); keep it that way
    end = min(len(buf), udp + int.from_bytes(buf[udp + 4 : udp + 6], "big"))
    buf[udp + 6 : udp + 8] = b"\x00\x00"
    buf[udp + 6 : udp + 8] = checksum.pack(checksum.l4(buf, 0, udp, end, 17) or 0xFFFF)
