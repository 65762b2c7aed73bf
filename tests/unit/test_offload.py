"""TUN offload: what split() cuts and the Coalescer merges is what the kernel would have sent.

The kernel's side is modelled by two reference functions written for clarity, not
speed: a TCP checksum over a whole packet, and the completion of a NEEDS_CSUM
write (sum from csum_start, with the pseudo-header sum already in the field).
"""

from __future__ import annotations

import os
import struct

from hypothesis import given, settings, strategies as st

from tunneld.engine import offload
from tunneld.proto.wire import PARTIAL
from tunneld.engine.offload import GSO_TCPV4, NEEDS_CSUM, VNET_HDR_LEN, Coalescer, single, split

SRC, DST = bytes([100, 64, 0, 2]), bytes([100, 64, 0, 3])


def ref_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s = 0
    for i in range(0, len(data), 2):
        s += data[i] << 8 | data[i + 1]
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ip_ok(pkt: bytes) -> bool:
    ihl = (pkt[0] & 15) * 4
    return ref_sum(pkt[:ihl]) == 0xFFFF


def l4_ok(pkt: bytes) -> bool:
    ihl = (pkt[0] & 15) * 4
    pseudo = pkt[12:20] + bytes([0, pkt[9]]) + struct.pack("!H", len(pkt) - ihl)
    return ref_sum(pseudo + pkt[ihl:]) == 0xFFFF


def kernel_completes(bufs: list) -> bytes:
    """What the kernel makes of one write: header + packet, checksum filled in."""
    raw = b"".join(bytes(b) for b in bufs)
    flags, gso, hdr_len, gso_size, start, off = struct.unpack_from("=BBHHHH", raw)
    pkt = bytearray(raw[VNET_HDR_LEN:])
    if flags & NEEDS_CSUM:
        s = ref_sum(bytes(pkt[start:]))
        pkt[start + off : start + off + 2] = struct.pack("!H", ~s & 0xFFFF)
    return bytes(pkt)


def tcp_packet(payload: bytes, seq: int, flags: int = 0x10, ident: int = 7, options: bytes = b"",
               src: bytes = SRC, sport: int = 40000) -> bytes:
    thl = 20 + len(options)
    total = 20 + thl + len(payload)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident, 0x4000, 64, 6, 0, src, DST))
    ip[10:12] = struct.pack("!H", ~ref_sum(bytes(ip)) & 0xFFFF)
    tcp = bytearray(struct.pack("!HHIIBBHHH", sport, 10250, seq, 99, (thl // 4) << 4, flags, 501, 0, 0) + options)
    pkt = bytes(ip) + bytes(tcp) + payload
    pseudo = pkt[12:20] + bytes([0, 6]) + struct.pack("!H", thl + len(payload))
    tcp[16:18] = struct.pack("!H", ~ref_sum(pseudo + bytes(tcp) + payload) & 0xFFFF)
    return bytes(ip) + bytes(tcp) + payload


def tso_read(payload: bytes, gso_size: int, seq: int = 1000, flags: int = 0x18, options: bytes = b"") -> bytes:
    """A read from an offloading TUN: header + one big TCP packet with a partial checksum."""
    pkt = bytearray(tcp_packet(payload, seq, flags, options=options))
    thl = 20 + len(options)
    pkt[36:38] = struct.pack("!H", offload.pseudo_sum(pkt, 6, len(pkt) - 20))
    return struct.pack("=BBHHHH", NEEDS_CSUM, GSO_TCPV4, 20 + thl, gso_size, 20, 16) + bytes(pkt)


TS_OPTION = b"\x01\x01\x08\x0a" + bytes(range(8))


def test_a_super_packet_is_cut_into_valid_segments():
    payload = os.urandom(10_000)
    segs, reason = split(tso_read(payload, 1388, seq=2**32 - 3000, options=TS_OPTION))
    assert reason == ""
    assert [len(s) - 52 for s in segs] == [1388] * 7 + [10_000 - 7 * 1388]
    assert b"".join(s[52:] for s in segs) == payload
    for i, s in enumerate(segs):
        assert ip_ok(s), "the IPv4 header checksum must be right: the kernel checks it"
        assert struct.unpack_from("!H", s, 2)[0] == len(s)
        assert struct.unpack_from("!H", s, 4)[0] == 7 + i
        assert struct.unpack_from("!I", s, 24)[0] == (2**32 - 3000 + 1388 * i) % 2**32
        assert s[33] == (0x18 if i == len(segs) - 1 else 0x10), "PSH only on the last segment"
        assert s[40:52] == TS_OPTION
        # The sender leaves the TCP checksum partial; the receiver's write completes it.
        assert l4_ok(kernel_completes(single(s)))


SRC6 = bytes.fromhex("20010db8006400000000000064400001")  # the lab overlay's IPv6 addresses
DST6 = bytes.fromhex("20010db8006400000000000064400002")


def tso6_read(payload: bytes, gso_size: int, seq: int = 1000, flags: int = 0x18, options: bytes = b"") -> bytes:
    """An IPv6 TCP super-packet (TUN_F_TSO6) as the TUN device hands it over."""
    thl = 20 + len(options)
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 10250, seq, 99, (thl // 4) << 4, flags, 501, 0, 0) + options)
    ip = struct.pack("!IHBB16s16s", 0x60000000, thl + len(payload), 6, 64, SRC6, DST6)
    pkt = bytearray(ip + bytes(tcp) + payload)
    pkt[56:58] = struct.pack("!H", offload.pseudo_sum6(pkt, 6, len(pkt) - 40))
    return struct.pack("=BBHHHH", NEEDS_CSUM, offload.GSO_TCPV6, 40 + thl, gso_size, 40, 16) + bytes(pkt)


def l4_ok6(pkt: bytes) -> bool:
    pseudo = pkt[8:40] + struct.pack("!I", len(pkt) - 40) + b"\x00\x00\x00" + bytes([pkt[6]])
    return ref_sum(pseudo + pkt[40:]) == 0xFFFF


def test_an_ipv6_super_packet_is_cut_into_valid_segments():
    payload = os.urandom(10_000)
    segs, reason = split(tso6_read(payload, 1368, seq=2**32 - 3000, flags=0x98, options=TS_OPTION))
    assert reason == ""
    assert [len(s) - 72 for s in segs] == [1368] * 7 + [10_000 - 7 * 1368]
    assert b"".join(s[72:] for s in segs) == payload
    for i, s in enumerate(segs):
        assert s[:4] == b"\x60\x00\x00\x00" and s[8:40] == SRC6 + DST6
        assert struct.unpack_from("!H", s, 4)[0] == len(s) - 40  # the payload length
        assert struct.unpack_from("!I", s, 44)[0] == (2**32 - 3000 + 1368 * i) % 2**32
        first, last = i == 0, i == len(segs) - 1
        assert s[53] == 0x10 | (0x80 if first else 0) | (0x08 if last else 0), "CWR first, PSH last"
        assert s[60:72] == TS_OPTION
        assert l4_ok6(kernel_completes(single(s)))  # the receiver's write: the kernel completes it
    bad = bytearray(tso6_read(payload, 1368))
    bad[VNET_HDR_LEN + 6] = 0  # a hop-by-hop header before TCP: not ours to cut
    assert split(bytes(bad)) == ([], "tun_gso_malformed")


def test_ipv6_segments_merge_into_one_write_the_kernel_can_resegment():
    payload = os.urandom(8 * 1368)
    segs, _ = split(tso6_read(payload, 1368, flags=0x10, options=TS_OPTION))
    c = Coalescer()
    for seg in segs:
        c.add(seg)
    (write,) = c.flush()
    raw = b"".join(bytes(b) for b in write)
    flags, gso, hdr_len, gso_size, start, off = struct.unpack_from("=BBHHHH", raw)
    assert (flags, gso, hdr_len, gso_size, start, off) == (NEEDS_CSUM, offload.GSO_TCPV6, 72, 1368, 40, 16)
    assert struct.unpack_from("!H", raw, VNET_HDR_LEN + 4)[0] == len(raw) - VNET_HDR_LEN - 40
    again, _ = split(raw)  # what the kernel's segmentation makes of it: the segments we had
    assert [a[:56] + a[58:] for a in again] == [s[:56] + s[58:] for s in segs]
    other = bytearray(segs[3])
    other[8:24] = DST6  # another flow (its source differs) in between: nothing merges across it
    c.add(segs[0])
    c.add(bytes(other))
    c.add(segs[1])
    assert len(c.flush()) == 2  # segs 0 and 1 merged (in order), the stranger alone


def test_a_plain_read_passes_and_a_deeper_partial_checksum_travels_with_its_place():
    pkt = tcp_packet(b"hello", 5)
    assert split(struct.pack("=BBHHHH", 0, 0, 0, 0, 0, 0) + pkt) == ([pkt], "")
    # VXLAN carrying a TCP packet whose checksum the kernel left for us: only we can finish it.
    inner = bytearray(tcp_packet(os.urandom(301), 9))
    inner[36:38] = struct.pack("!H", offload.pseudo_sum(inner, 6, len(inner) - 20))
    udp_len = 8 + 8 + 14 + len(inner)
    outer = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 1, 0, 64, 17, 0, SRC, DST))
    outer += struct.pack("!HHHH", 5555, 8472, udp_len, 0) + bytes(8) + bytes(12) + b"\x08\x00" + inner
    start = 20 + 8 + 8 + 14 + 20
    (out,), reason = split(struct.pack("=BBHHHH", NEEDS_CSUM, 0, 0, 0, start, 16) + bytes(outer))
    assert reason == "" and out[0] == PARTIAL and out[5:] == bytes(outer)
    # the receiver's write puts it back where the kernel completes it
    c = Coalescer()
    c.add(out)
    (write,) = c.flush()
    assert l4_ok(kernel_completes(write)[50:])


def vxlan_tunnel_read(payload: bytes, gso_size: int, seq: int = 5000, flags: int = 0x18) -> bytes:
    """What an offloading TUN (UDP-tunnel GSO) hands over for flannel.1's VXLAN: the 24-byte
    header, then outer IPv4 / UDP 8472 / VXLAN / Ethernet / inner IPv4 / TCP / payload, the
    inner TCP checksum partial and the outer UDP one partial too (flag 8)."""
    inner = bytearray(tcp_packet(payload, seq, flags, options=TS_OPTION))
    inner[36:38] = struct.pack("!H", offload.pseudo_sum(inner, 6, len(inner) - 20))
    udp_len = 8 + 8 + 14 + len(inner)
    outer = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 300, 0, 64, 17, 0, SRC, DST))
    outer[10:12] = struct.pack("!H", ~ref_sum(bytes(outer)) & 0xFFFF)
    outer += struct.pack("!HHHH", 5555, 8472, udp_len, 0x1234) + b"\x08" + bytes(3) + b"\x00\x00\x01\x00"
    outer += bytes(range(12)) + b"\x08\x00" + inner
    hdr = struct.pack("=BBHHHH", NEEDS_CSUM | 8, 0x21, 50 + 40 + len(TS_OPTION), gso_size, 70, 16)
    return hdr + bytes(10) + struct.pack("<HH", 20, 50) + bytes(outer)


def test_a_vxlan_super_packet_is_cut_into_the_vxlan_packets_the_kernel_would_send():
    payload = os.urandom(9_000)
    segs, reason = split(vxlan_tunnel_read(payload, 1318), 24)
    assert reason == ""
    sizes = [1318] * 6 + [9_000 - 6 * 1318]
    assert [len(s) - 5 - 50 - 52 for s in segs] == sizes
    assert b"".join(s[5 + 50 + 52:] for s in segs) == payload
    for i, s in enumerate(segs):
        assert s[:5] == struct.pack("!BHH", PARTIAL, 70, 16), "the inner checksum's place travels along"
        pkt = s[5:]
        assert ip_ok(pkt) and struct.unpack_from("!HH", pkt, 2) == (len(pkt), 300 + i)
        assert struct.unpack_from("!HHHH", pkt, 20) == (5555, 8472, len(pkt) - 20, 0), "no outer UDP checksum"
        assert pkt[28:50] == b"\x08" + bytes(3) + b"\x00\x00\x01\x00" + bytes(range(12)) + b"\x08\x00"
        inner = pkt[50:]
        assert ip_ok(inner) and struct.unpack_from("!HH", inner, 2) == (len(inner), 7 + i)
        assert struct.unpack_from("!I", inner, 24)[0] == 5000 + 1318 * i
        assert inner[33] == (0x18 if i == len(segs) - 1 else 0x10), "PSH only on the last segment"
        # the receiver writes it as NEEDS_CSUM at that place; the kernel's sum then checks out
        c = Coalescer()
        c.add(s)
        (write,) = c.flush()
        assert l4_ok(kernel_completes(write)[50:])


def test_a_vxlan_super_packet_that_lies_about_its_headers_is_dropped():
    good = bytearray(vxlan_tunnel_read(os.urandom(3000), 1318))
    bad_offsets = bytes(good[:20]) + struct.pack("<HH", 20, 40) + bytes(good[24:])
    assert split(bad_offsets, 24) == ([], "tun_gso_malformed")
    not_tcp = bytearray(good)
    not_tcp[24 + 50 + 9] = 17
    assert split(bytes(not_tcp), 24) == ([], "tun_gso_malformed")
    # a 10-byte-header reader never takes a tunnel super-packet for one
    assert split(bytes(good), 10)[1] == "tun_gso_unsupported"


def test_garbage_reads_are_dropped_by_reason():
    assert split(b"\x00" * 5)[1] == "tun_short"
    assert split(struct.pack("=BBHHHH", 0, 3, 0, 1000, 0, 0) + bytes(100))[1] == "tun_gso_unsupported"  # UFO
    assert split(struct.pack("=BBHHHH", 0, 4, 0, 1000, 0, 0) + bytes(100))[1] == "tun_gso_malformed"  # not IPv6
    assert split(struct.pack("=BBHHHH", 1, 1, 0, 1000, 20, 16) + bytes(100))[1] == "tun_gso_malformed"


def test_consecutive_segments_merge_into_one_write_the_kernel_can_resegment():
    payload = os.urandom(20_000)
    segs, _ = split(tso_read(payload, 1400, options=TS_OPTION))
    c = Coalescer()
    for s in segs:
        c.add(s)
    (write,) = c.flush()
    raw = b"".join(bytes(b) for b in write)
    flags, gso, hdr_len, gso_size, start, off = struct.unpack_from("=BBHHHH", raw)
    assert (flags, gso, hdr_len, gso_size, start, off) == (NEEDS_CSUM, GSO_TCPV4, 52, 1400, 20, 16)
    merged = raw[VNET_HDR_LEN:]
    assert ip_ok(merged) and struct.unpack_from("!H", merged, 2)[0] == len(merged)
    assert merged[52:] == payload and merged[33] & 0x08
    assert l4_ok(kernel_completes(write))
    # and the kernel's own segmentation of it gives back the segments
    again, _ = split(raw)
    assert [s[52:] for s in again] == [s[52:] for s in segs]


def test_what_must_not_merge_goes_alone_and_in_order():
    c = Coalescer()
    a0 = tcp_packet(b"a" * 100, 1000)
    a_gap = tcp_packet(b"b" * 100, 1300)  # a hole before it: not mergeable
    syn = tcp_packet(b"", 1, flags=0x02)
    fin = tcp_packet(b"z" * 10, 1400, flags=0x11)
    udp = bytes(tcp_packet(b"x" * 20, 0))[:9] + b"\x11" + bytes(tcp_packet(b"x" * 20, 0))[10:]
    for p in (a0, a_gap, syn, fin, udp):
        c.add(p)
    writes = c.flush()
    assert len(writes) == 5
    assert [kernel_completes(w)[40:] for w in writes[:4]] == [a0[40:], a_gap[40:], syn[40:], fin[40:]]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 1400)), min_size=1, max_size=80),
       st.integers(200, 1400))
def test_interleaved_flows_arrive_complete_and_in_order(events, mss):
    """Whatever mix of flows and sizes arrives, each flow's bytes reach the kernel in order."""
    c = Coalescer()
    seqs, sent = [0, 0, 0], [b"", b"", b""]
    for flow, n in events:
        n = min(n, mss)
        data = os.urandom(n)
        c.add(tcp_packet(data, seqs[flow], sport=40000 + flow))
        seqs[flow] += n
        sent[flow] += data
    got = [b"", b"", b""]
    for w in c.flush():
        raw = b"".join(bytes(b) for b in w)
        pkt = kernel_completes(w)
        assert l4_ok(pkt) and ip_ok(pkt)
        segs = split(raw)[0] if raw[1] == GSO_TCPV4 else [pkt]
        for s in segs:
            flow = struct.unpack_from("!H", s, 20)[0] - 40000
            assert struct.unpack_from("!I", s, 24)[0] == len(got[flow])
            got[flow] += s[40:]
    assert got == sent


@given(st.binary(min_size=0, max_size=200))
def test_any_read_is_a_list_of_packets_or_a_reason(buf):
    packets, reason = split(buf)
    assert bool(packets) != bool(reason)


@given(st.binary(min_size=20, max_size=200))
def test_any_authenticated_payload_becomes_one_write(pkt):
    pkt = b"\x45" + pkt[1:]
    c = Coalescer()
    c.add(pkt)
    assert len(c.flush()) == 1
