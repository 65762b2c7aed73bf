"""The packets inside the tunnel, IPv4 and IPv6 (engine/inner.py), and how an IPv6 packet is
written to tunneld0 (offload.single): pure."""

import ipaddress
import struct

from tunneld.control.overlay6 import address6
from tunneld.engine import checksum, inner
from tunneld.engine.offload import NEEDS_CSUM, PLAIN_HDR, single
from tests.unit.test_mss import syn6

NET6 = ipaddress.IPv6Network("2001:db8:64::/64")
PREFIX = inner.prefix_of(str(NET6))
A, B = ipaddress.IPv4Address("100.64.0.7").packed, ipaddress.IPv4Address("100.64.0.9").packed


def v6(src: bytes, dst: bytes, nh: int = 58, payload: bytes = bytes(8)) -> bytes:
    return bytes([0x60, 0, 0, 0]) + struct.pack("!HBB", len(payload), nh, 64) + src + dst + payload


def overlay(v4: bytes) -> bytes:
    return address6(NET6, ipaddress.IPv4Address(v4)).packed


def test_a_packet_to_an_overlay_address_names_its_peer_and_nothing_else_does():
    assert PREFIX == NET6.network_address.packed[:12] and inner.prefix_of(None) is None
    assert inner.destination6(v6(overlay(A), overlay(B)), PREFIX) == B
    outside = ipaddress.IPv6Address("2001:db8:65::6440:9").packed
    assert inner.destination6(v6(overlay(A), outside), PREFIX) is None
    assert inner.destination6(v6(overlay(A), overlay(B)), None) is None  # a network without IPv6
    assert inner.destination6(v6(overlay(A), overlay(B))[:39], PREFIX) is None
    v4 = bytes([0x45]) + bytes(11) + A + B
    assert inner.destination6(v4 + bytes(20), PREFIX) is None


def test_the_inner_source_is_the_peers_own_address_in_either_family():
    assert inner.from_peer(v6(overlay(A), overlay(B)), A, (), PREFIX)
    assert not inner.from_peer(v6(overlay(B), overlay(A)), A, (), PREFIX)  # another node's
    assert not inner.from_peer(v6(overlay(A), overlay(B)), A, (), None)
    other = ipaddress.IPv6Address("2001:db8:65::6440:7").packed  # the same last 32 bits, another prefix
    assert not inner.from_peer(v6(other, overlay(B)), A, (), PREFIX)
    assert not inner.from_peer(v6(overlay(A), overlay(B))[:39], A, (), PREFIX)
    v4 = bytes([0x45]) + bytes(11) + A + B
    assert inner.from_peer(v4, A, (), PREFIX) and not inner.from_peer(v4, B, (), PREFIX)


def test_an_ipv6_syn_is_clamped_20_bytes_below_ipv4():
    out = inner.clamped(syn6(1460), True, 1392, 1342)
    assert struct.unpack_from("!H", out, 62)[0] == 1392 - 20


def test_ipv6_tcp_and_udp_go_to_tunneld0_for_the_kernel_to_checksum():
    for nh, at in ((6, 56), (17, 46)):
        packet = v6(overlay(A), overlay(B), nh, bytes(40))
        header, head, field, tail = single(packet)
        flags, gso, _, _, start, offset = struct.unpack("=BBHHHH", header)
        assert (flags, gso, start, offset) == (NEEDS_CSUM, 0, 40, at - 40)
        assert bytes(head) + field + bytes(tail) == packet[:at] + field + packet[at + 2:]
        partial = struct.unpack("!H", field)[0]
        assert partial == checksum.pseudo_sum6(packet, nh, 40)
        # the kernel completes it to what a full checksum is
        done = bytearray(packet)
        done[at:at + 2] = field
        assert checksum.finish(checksum.fold(checksum.sum16(done[40:]))) == checksum.l4_v6(packet, 40, len(packet), nh)
    assert single(v6(overlay(A), overlay(B))) == [PLAIN_HDR, v6(overlay(A), overlay(B))]  # ICMPv6: as it is


def test_node_json_keeps_the_ipv6_prefix_and_drops_one_it_cannot_use(tmp_path):
    from tunneld.engine.effects import Assignment
    from tunneld.state import load_node_state, save_node_state
    a = Assignment("n1", "100.64.0.7", "100.64.0.0/10", "2001:db8:64::/64")
    save_node_state(str(tmp_path), bytes(32), "relay:7000", a, 1432)
    back = load_node_state(str(tmp_path))
    assert back.assignment == a and str(back.assignment.address6) == "2001:db8:64::6440:7/64"
    for bad in ("fe80::/64", "2001:db8::/120", 7, None):
        save_node_state(str(tmp_path), bytes(32), "relay:7000", Assignment("n1", "100.64.0.7", "100.64.0.0/10", bad),
                        1432)
        kept = load_node_state(str(tmp_path)).assignment
        assert kept.network6 is None and kept.address6 is None and kept.address == "100.64.0.7"


def test_a_direct_endpoint_inside_either_overlay_range_is_refused():
    from tunneld.engine.routes import OutsideOverlay
    outside = OutsideOverlay()
    outside.set(ipaddress.IPv4Network("100.64.0.0/10"), NET6)
    assert outside.allows(("198.51.100.7", 4000)) and outside.allows(("2001:db8:0:2::b", 4000))
    assert not outside.allows(("100.64.0.9", 4000))
    assert not outside.allows(("2001:db8:64::6440:9", 4000))  # the tunnel inside the tunnel, over IPv6
    assert not outside.allows(("::ffff:100.64.0.9", 4000))  # IPv4 in IPv6's clothes
    assert not outside.allows(("not an address", 4000))


def test_route_names_the_peer_of_either_family_and_tells_no_ip_apart():
    peers = {B: "b"}
    table6 = [(int(ipaddress.IPv6Address("2001:db8:70::")), (2**128 - 1) ^ (2**64 - 1), "gw")]
    assert inner.route(v6(overlay(A), overlay(B)), PREFIX, peers, [], table6) == ("b", True)
    assert inner.route(v6(overlay(A), ipaddress.IPv6Address("2001:db8:70::5").packed), PREFIX, peers, [],
                       table6) == ("gw", True)
    assert inner.route(v6(overlay(A), ipaddress.IPv6Address("2001:db8:71::5").packed), PREFIX, peers, [],
                       table6) == (None, True)
    v4 = bytes([0x45]) + bytes(11) + A + B
    assert inner.route(v4, PREFIX, peers, [], table6) == ("b", False)
    assert inner.route(b"\x10" + bytes(40), PREFIX, peers, [], table6) == (None, None)
    assert inner.route(b"", PREFIX, peers, [], table6) == (None, None)
