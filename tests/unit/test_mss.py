"""MSS clamping: SYNs get a smaller MSS with valid checksums; everything else passes untouched."""

import ipaddress
import struct

from hypothesis import given, strategies as st

from tunneld.engine.mss import clamp


def csum(data: bytes) -> int:
    """The textbook Internet checksum, big-endian, for checking."""
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src, dst, proto, payload, frag=0):
    total = 20 + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, frag, 64, proto, 0,
                      ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + payload


def tcp(src, dst, flags, options=b"", data=b""):
    options += b"\x00" * (-len(options) % 4)
    off = (20 + len(options)) // 4
    seg = struct.pack("!HHIIBBHHH", 40000, 10250, 1, 0, off << 4, flags, 65535, 0, 0) + options + data
    pseudo = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + struct.pack("!BBH", 0, 6, len(seg))
    return seg[:16] + struct.pack("!H", csum(pseudo + seg)) + seg[18:]


def mss_opt(mss):
    return b"\x02\x04" + struct.pack("!H", mss)


def syn(mss, options_before=b"", src="100.64.0.1", dst="100.64.0.2"):
    return ipv4(src, dst, 6, tcp(src, dst, 0x02, options_before + mss_opt(mss) + b"\x04\x02"))


def tcp_valid(packet, ip=0):
    ihl = (packet[ip] & 15) * 4
    total = struct.unpack("!H", packet[ip + 2 : ip + 4])[0]
    seg = packet[ip + ihl : ip + total]
    pseudo = packet[ip + 12 : ip + 20] + struct.pack("!BBH", 0, 6, len(seg))
    return csum(pseudo + seg) == 0


def mss_of(packet, ip=0):
    ihl = (packet[ip] & 15) * 4
    i = packet.find(b"\x02\x04", ip + ihl + 20)
    return struct.unpack("!H", packet[i + 2 : i + 4])[0]


def test_a_big_mss_is_clamped_with_a_valid_checksum():
    p = syn(1460)
    assert tcp_valid(p)
    out = clamp(p, 1392, 1292)
    assert mss_of(out) == 1392 and tcp_valid(out) and len(out) == len(p)


def test_a_small_mss_and_non_syns_are_untouched():
    assert clamp(syn(1200), 1392, 1292) is not None
    p = syn(1200)
    assert clamp(p, 1392, 1292) is p
    ack = ipv4("100.64.0.1", "100.64.0.2", 6, tcp("100.64.0.1", "100.64.0.2", 0x10, mss_opt(1460)))
    assert clamp(ack, 1392, 1292) is ack
    synack = ipv4("100.64.0.1", "100.64.0.2", 6, tcp("100.64.0.1", "100.64.0.2", 0x12, mss_opt(1460)))
    assert mss_of(clamp(synack, 1392, 1292)) == 1392


def test_options_before_the_mss_and_odd_alignment():
    # NOP, window scale (3 bytes): the MSS value lands at an odd offset
    p = syn(1460, options_before=b"\x01\x03\x03\x07")
    out = clamp(p, 1000, 900)
    assert mss_of(out) == 1000 and tcp_valid(out)
    p = syn(1460, options_before=b"\x03\x03\x07")
    out = clamp(p, 1000, 900)
    assert mss_of(out) == 1000 and tcp_valid(out)


def test_later_fragments_are_untouched():
    p = ipv4("100.64.0.1", "100.64.0.2", 6, b"\x00\x02" * 20, frag=10)
    assert clamp(p, 1000, 900) is p


def vxlan(inner_frame, udp_checksum=False):
    src, dst = "100.64.0.1", "100.64.0.2"
    udp_payload = b"\x08\x00\x00\x00\x00\x00\x01\x00" + inner_frame
    udp = struct.pack("!HHHH", 51234, 8472, 8 + len(udp_payload), 0) + udp_payload
    if udp_checksum:
        pseudo = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed + struct.pack(
            "!BBH", 0, 17, len(udp))
        c = csum(pseudo + udp) or 0xFFFF
        udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    return ipv4(src, dst, 17, udp)


def pod_syn(mss):
    ip = syn(mss, src="198.18.1.2", dst="198.18.3.2")
    return b"\xaa" * 6 + b"\xbb" * 6 + b"\x08\x00" + ip


INNER = 20 + 8 + 8 + 14


def udp_valid(packet):
    udp = packet[20:]
    if udp[6:8] == b"\x00\x00":
        return True
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    return csum(pseudo + udp) == 0


def test_pod_syns_inside_flannel_vxlan_are_clamped():
    for with_udp_checksum in (False, True):
        p = vxlan(pod_syn(1342), with_udp_checksum)
        out = clamp(p, 1342, 1292)
        assert mss_of(out, INNER) == 1292 and tcp_valid(out, INNER) and udp_valid(out)
        assert (out[26:28] == b"\x00\x00") == (not with_udp_checksum)


def test_other_udp_is_untouched():
    p = ipv4("100.64.0.1", "100.64.0.2", 17, struct.pack("!HHHH", 1, 53, 12, 0) + b"dnsq")
    assert clamp(p, 1000, 900) is p


@given(st.binary(min_size=20, max_size=200))
def test_any_packet_is_returned_or_rewritten_never_raises(data):
    packet = b"\x45" + data[1:]
    out = clamp(packet, 1000, 900)
    assert len(out) == len(packet)


@given(st.integers(536, 9000), st.integers(536, 9000))
def test_clamped_to_the_limit_exactly(mss, limit):
    out = clamp(syn(mss), limit, 0)
    assert mss_of(out) == min(mss, limit) and tcp_valid(out)


def _ones(data: bytes) -> int:
    """RFC 1071 the slow way, word by word: an independent check of the checksum module."""
    if len(data) % 2:
        data += b"\x00"
    s = 0
    for i in range(0, len(data), 2):
        s += (data[i] << 8) | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def syn6(mss: int, options: bytes = b"") -> bytes:
    import ipaddress
    src = ipaddress.IPv6Address("fd3a:5e1c:92f0::6440:1").packed
    dst = ipaddress.IPv6Address("fd3a:5e1c:92f0::6440:2").packed
    opts = options + b"\x02\x04" + mss.to_bytes(2, "big")
    opts += b"\x00" * (-len(opts) % 4)
    tcp = bytearray(b"\x30\x39\x00\x50" + b"\x00\x00\x00\x01" + b"\x00" * 4
                    + bytes([(20 + len(opts)) // 4 << 4, 0x02]) + b"\xff\xff" + b"\x00\x00\x00\x00" + opts)
    pseudo = src + dst + len(tcp).to_bytes(4, "big") + b"\x00\x00\x00\x06"
    tcp[16:18] = (~_ones(pseudo + bytes(tcp)) & 0xFFFF).to_bytes(2, "big")
    return b"\x60\x00\x00\x00" + len(tcp).to_bytes(2, "big") + b"\x06\x40" + src + dst + bytes(tcp)


def test_an_ipv6_syn_is_clamped_with_a_valid_checksum():
    from tunneld.engine.mss import clamp6
    for options in (b"", b"\x01\x01", b"\x01\x03\x03\x07"):
        packet = syn6(1440, options)
        out = clamp6(packet, 1392)
        assert out != packet and len(out) == len(packet)
        i = out.index(b"\x02\x04", 60)
        assert int.from_bytes(out[i + 2:i + 4], "big") == 1392
        pseudo = out[8:40] + (len(out) - 40).to_bytes(4, "big") + b"\x00\x00\x00\x06"
        assert _ones(pseudo + out[40:]) == 0xFFFF  # the receiver's check passes
        assert clamp6(syn6(1300, options), 1392) == syn6(1300, options)  # small enough: untouched


def test_ipv6_non_syns_and_other_headers_are_untouched():
    from tunneld.engine.mss import clamp6
    packet = bytearray(syn6(1440))
    packet[53] = 0x10  # an ACK
    assert clamp6(bytes(packet), 1392) == bytes(packet)
    hop = bytearray(syn6(1440))
    hop[6] = 0  # a hop-by-hop header first: left alone
    assert clamp6(bytes(hop), 1392) == bytes(hop)
    assert clamp6(b"\x60" + bytes(30), 1392) == b"\x60" + bytes(30)


@given(st.binary(min_size=0, max_size=200))
def test_any_ipv6_packet_is_returned_or_rewritten_never_raises(data):
    from tunneld.engine.mss import clamp6
    packet = b"\x60" + data[1:6] + b"\x06" + data[7:]
    assert len(clamp6(packet, 1000)) == len(packet)
