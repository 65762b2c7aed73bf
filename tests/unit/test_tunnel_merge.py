"""flannel's VXLAN back to the kernel whole (engine/tunnel_merge.py): what the receiver
writes is a UDP-tunnel super-packet the kernel (6.18) takes from a TUN device, and its
segmentation gives back exactly the VXLAN packets the sender cut.

The kernel's side is modelled after virtio_net_hdr_tnl_to_skb(): the offsets it checks
(the outer transport header at 34 bytes or more, as if an Ethernet header came first),
then the inner TCP stream cut at gso_size with its checksum completed.
"""

from __future__ import annotations

import os
import struct

from hypothesis import given, strategies as st

from tests.unit.test_offload import TS_OPTION, ip_ok, l4_ok, ref_sum, vxlan_tunnel_read
from tunneld.engine.offload import Coalescer, split
from tunneld.engine.segment import cut
from tunneld.proto.wire import PARTIAL

ETH_HLEN = 14


def kernel_takes(write: list) -> tuple[dict, bytes]:
    """The 24-byte header's fields and the packet, after the kernel's checks of a tunnel write."""
    raw = b"".join(bytes(b) for b in write)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_off = struct.unpack_from("=BBHHHH", raw)
    outer_th, inner_nh = struct.unpack_from("<HH", raw, 20)
    pkt = raw[24:]
    assert gso_type == 0x21 and flags & 1 and not flags & 2, "TCPv4 in a UDPv4 tunnel, NEEDS_CSUM"
    assert outer_th >= ETH_HLEN + 20, "the kernel refuses an outer transport header before 34"
    assert inner_nh >= outer_th + 8 and csum_start >= inner_nh + 20 and csum_off == 16
    assert hdr_len <= len(pkt) and csum_start + csum_off + 2 <= len(pkt)
    assert (pkt[0] & 15) * 4 == outer_th and ip_ok(pkt), "the outer IPv4 header, options and all"
    return {"gso_size": gso_size, "th": csum_start, "nh": inner_nh, "outer_th": outer_th}, pkt


def resegment(fields: dict, pkt: bytes) -> list[bytes]:
    """The kernel's segmentation of the merged packet, each segment's inner checksum completed."""
    th, nh = fields["th"], fields["nh"]
    h = th + (pkt[th + 12] >> 4) * 4
    out = []
    for seg in cut(memoryview(pkt), fields["gso_size"], nh, th, h, fields["outer_th"]):
        seg = bytearray(seg)
        seg[th + 16 : th + 18] = struct.pack("!H", ~ref_sum(bytes(seg[th:])) & 0xFFFF)
        out.append(bytes(seg))
    return out


def vxlan_segments(payload: bytes, gso_size: int = 1318, seq: int = 5000) -> list[bytes]:
    segs, reason = split(vxlan_tunnel_read(payload, gso_size, seq), 24)
    assert reason == ""
    return segs


def test_the_vxlan_packets_of_one_flow_go_back_as_one_super_packet_the_kernel_takes():
    payload = os.urandom(30_000)
    segs = vxlan_segments(payload)
    c = Coalescer(tunnel=True)
    for s in segs:
        c.add(s)
    (write,) = c.flush()
    fields, pkt = kernel_takes(write)
    assert fields == {"gso_size": 1318, "th": 86, "nh": 66, "outer_th": 36}
    assert struct.unpack_from("!H", pkt, 2)[0] == len(pkt), "outer total length"
    assert struct.unpack_from("!HHHH", pkt, 36) == (5555, 8472, len(pkt) - 36, 0)
    inner = pkt[66:]
    assert ip_ok(inner) and struct.unpack_from("!H", inner, 2)[0] == len(inner)
    assert inner[20 + 20 + len(TS_OPTION):] == payload and inner[33] & 0x08, "PSH of the last segment kept"
    # The kernel's segmentation of it: the sender's VXLAN packets, byte for byte past the
    # 16 bytes of no-op options, every header and inner checksum valid.
    again = resegment(fields, pkt)
    assert len(again) == len(segs)
    for mine, theirs in zip(again, segs):
        theirs = theirs[5:]
        assert mine[20:36] == b"\x01" * 16 and mine[12:20] == theirs[12:20] and mine[4:6] == theirs[4:6]
        at = 86 + 16  # the inner TCP checksum: complete in mine, partial in theirs
        assert mine[36:at] == theirs[20 : at - 16] and mine[at + 2:] == theirs[at - 14:]
        assert l4_ok(mine[66:]) and ip_ok(mine[66:]) and ip_ok(mine)


def test_without_the_kernels_tunnel_offload_every_vxlan_packet_goes_alone():
    segs = vxlan_segments(os.urandom(10_000))
    c = Coalescer(tunnel=False)
    for s in segs:
        c.add(s)
    writes = c.flush()
    assert len(writes) == len(segs)
    assert all(len(bytes(w[0])) == 10 for w in writes)


def test_two_pod_flows_interleaved_merge_apart_and_what_differs_goes_alone_in_order():
    a = vxlan_segments(os.urandom(6000), seq=1000)
    b = [bytearray(s) for s in vxlan_segments(os.urandom(6000), seq=9000)]
    for s in b:  # another pod flow: another inner source port, and VXLAN's source port follows it
        s[5 + 20 : 5 + 22] = struct.pack("!H", 5556)
        s[5 + 70 : 5 + 72] = struct.pack("!H", 40001)
    b = [bytes(s) for s in b]
    odd = bytearray(a[1])
    odd[5 + 90] ^= 0xFF  # a TCP option that differs: the kernel's GRO would not merge it either
    stream = [a[0], b[0], bytes(odd), b[1], b[2], *a[2:], *b[3:]]
    c = Coalescer(tunnel=True)
    for s in stream:
        c.add(s)
    writes = c.flush()
    got = {}
    for w in writes:
        raw = b"".join(bytes(x) for x in w)
        if len(bytes(w[0])) == 24:
            fields, pkt = kernel_takes(w)
            segs = [s[66:] for s in resegment(fields, pkt)]
        else:
            segs = [raw[10 + 50:]]
        for inner in segs:
            sport = struct.unpack_from("!H", inner, 20)[0]
            got.setdefault(sport, []).append(struct.unpack_from("!I", inner, 24)[0])
    assert got[40000] == [1000 + 1318 * i for i in range(len(a))], "flow a in order, none lost"
    assert got[40001] == [9000 + 1318 * i for i in range(len(b))], "flow b in order, none lost"
    assert len(writes) >= 4


@given(st.binary(min_size=19, max_size=300))
def test_any_authenticated_partial_payload_becomes_one_write(body):
    """What the engine hands over (an IPv4 packet of 20 bytes or more from an authenticated
    peer, its checksum's place in front): never an error, never merged with itself."""
    pkt = bytes((PARTIAL, 0, 70, 0, 16)) + b"\x45" + body
    c = Coalescer(tunnel=True)
    c.add(pkt)
    c.add(pkt)  # the same sequence number twice never joins
    assert len(c.flush()) == 2
