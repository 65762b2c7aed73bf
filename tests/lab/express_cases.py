"""The express path (tunneld/net/_express.c) case by case, run in a network namespace of its
own by tests/integration/test_express.py: `python express_cases.py CASE`, exit 0 when the
case holds, an assertion's message otherwise.

Two real node engines (the in-memory network's, after a real handshake) each drive a real
DataPlane with a real UDP socket on the namespace's loopback; each one's TUN device is one
end of a datagram socketpair, so that a case writes what the kernel would hand tunneld
(virtio-net header and packet) and reads back exactly what tunneld wrote.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from tests.sim.simnet import public_pair  # noqa: E402
from tunneld.engine.offload import GSO_TCPV4, NEEDS_CSUM, PLAIN_HDR, _VNET, single, split  # noqa: E402
from tunneld.engine.checksum import ip_header  # noqa: E402
from tunneld.net import express  # noqa: E402
from tunneld.net import backlog  # noqa: E402
from tunneld.net.dataplane import DataPlane  # noqa: E402
from tunneld.net.express import NodeSource  # noqa: E402
from tunneld.proto import wire  # noqa: E402
from tunneld.proto.endpoint import RELAY  # noqa: E402

UDP_SEGMENT = 103


def ipv4(src: bytes, dst: bytes, proto: int, body: bytes, frag: int = 0x4000, ident: int = 1) -> bytes:
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ident, frag, 64, proto, 0, src, dst))
    struct.pack_into("!H", hdr, 10, ip_header(bytes(hdr)))
    return bytes(hdr) + body


def tcp(src, dst, seq, payload=b"", flags=0x10, sport=40000, dport=10250, ident=1):
    return ipv4(src, dst, 6, struct.pack("!HHIIBBHHH", sport, dport, seq, 1, 0x50, flags, 65535, 0, 0) + payload,
                ident=ident)


def udp(src, dst, payload, dport=9999, csum=0x1234):
    return ipv4(src, dst, 17, struct.pack("!HHHH", 5000, dport, 8 + len(payload), csum) + payload)


def icmp(src, dst, payload=b"ping" * 14):
    return ipv4(src, dst, 1, b"\x08\x00\x00\x00\x00\x01\x00\x01" + payload)


class Node:
    """One engine, its DataPlane, its socket, and its TUN device's far end (`app`)."""

    def __init__(self, engine, tunnel: bool = False):
        self.engine = engine
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.app, tun = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.app.setblocking(False)
        tun.setblocking(False)
        self.tun = tun
        self.drops: Counter = Counter()
        self.errors = 0
        self.plane = DataPlane(tun.fileno(), tunnel, self.sock, 1500, self.drops, self.error)
        self.handed_tun: list = []
        self.handed_udp: list = []
        self.relay = None  # where a case's relay speaks from (over UDP)
        source = NodeSource(engine, lambda: 1, lambda: self.relay, lambda: None, self.error)
        readers = self.plane.use_express(source, self.slow_tun, self.slow_udp)
        assert readers is not None, "the express path is not built"
        self.on_tun, self.on_udp = readers
        engine.out = self

    def error(self):
        self.errors += 1

    # the engine's Transmit, as the daemon's
    def send(self, ep, data):
        self.plane.send(ep, data)

    def write_tun(self, packet):
        self.plane.write_tun(packet)

    # the Python paths, recorded (and run, where a case wants them)
    run_slow = False

    def slow_tun(self, first, now):
        self.handed_tun.append(first)
        if self.run_slow:
            self.plane.on_tun(self.engine.from_tun_train, first, now)

    def slow_udp(self, first, now):
        self.handed_udp.append(first)
        if self.run_slow:
            self.plane.on_udp(self.engine.receive, None, first, now)

    def written(self) -> list[bytes]:
        return received(self.app)

    def peer(self):
        (p,) = self.engine.peers.values()
        return p

    @property
    def address(self) -> bytes:
        return socket.inet_aton(self.engine.assignment.address)


def pair(tunnel: bool = False):
    if express.Express is None:
        raise SystemExit("the express path (tunneld/net/_express.c) is not built")
    _, ea, eb = public_pair()
    a, b = Node(ea, tunnel), Node(eb, tunnel)
    # the real sockets are where each sends the other
    a.peer().tx_ep, b.peer().tx_ep = b.sock.getsockname(), a.sock.getsockname()
    a.engine.table.version += 1
    b.engine.table.version += 1
    return a, b


def endpoint() -> socket.socket:
    """A UDP socket of the case's own on the namespace's loopback, non-blocking."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def redirect(n: Node) -> socket.socket:
    """n's peer moved to a socket of the case's own, as probes.retarget moves a path."""
    sock = endpoint()
    n.peer().tx_ep = sock.getsockname()
    n.engine.table.version += 1
    return sock


def received(sock, most: int = 1000) -> list[bytes]:
    """What sock holds now, up to most datagrams."""
    out = []
    for _ in range(most):
        try:
            out.append(sock.recv(1 << 17))
        except BlockingIOError:
            break
    return out


def settle(sock, timeout=1.0):
    """Until the datagrams sent on loopback are in the socket (they are at once; bounded)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            return
        except BlockingIOError:
            time.sleep(0.001)
    raise AssertionError("nothing arrived")


def through(a, b, packet, vnet=PLAIN_HDR):
    a.app.send(vnet + packet)
    a.on_tun()
    settle(b.sock)
    b.on_udp()
    return b.written()


def case_lone_packets_cross_in_c():
    """ICMP, UDP with and without a checksum, a TCP ACK (its checksum left partial by the
    kernel), a fragment: each crosses in C both ways, and tunneld0 gets exactly what the
    Python path writes (offload.single)."""
    a, b = pair()
    src, dst = a.address, b.address
    partial_tcp = _VNET.pack(NEEDS_CSUM, 0, 0, 0, 20, 16)
    partial_udp = _VNET.pack(NEEDS_CSUM, 0, 0, 0, 20, 6)
    cases = [(icmp(src, dst), PLAIN_HDR), (udp(src, dst, b"x" * 36), partial_udp),
             (udp(src, dst, b"y" * 3, csum=0), PLAIN_HDR), (tcp(src, dst, 7, b"z" * 100), partial_tcp),
             (ipv4(src, dst, 17, struct.pack("!HHHH", 5000, 9999, 200, 0x4321) + b"f" * 64, frag=0x2000),
              PLAIN_HDR)]
    tx0, rx0 = a.peer().tx_bytes, b.peer().rx_bytes
    for packet, vnet in cases:
        got = through(a, b, packet, vnet)
        assert got == [b"".join(bytes(x) for x in single(packet))], (packet.hex(), [g.hex() for g in got])
    sent = sum(len(p) for p, _ in cases)
    assert a.peer().tx_bytes - tx0 == sent and b.peer().rx_bytes - rx0 == sent
    assert not a.handed_tun and not b.handed_udp, (a.handed_tun, b.handed_udp)
    assert a.plane.express.counts["express_sent"] == len(cases)
    assert b.plane.express.counts["express_received"] == len(cases)
    assert not a.drops and not b.drops and not a.errors and not b.errors


def case_what_c_does_not_carry_goes_to_python_as_read():
    """A SYN (its MSS is clamped), VXLAN, a super-packet that is not TCP, another GSO type,
    IPv6, an unknown destination and a checksum left deeper in: each read goes to the Python
    path byte for byte, and nothing of it leaves from C."""
    a, b = pair()
    src, dst = a.address, b.address
    syn = tcp(src, dst, 1, flags=0x02)
    reads = [PLAIN_HDR + syn,
             _VNET.pack(0, 0, 0, 0, 0, 0) + udp(src, dst, b"v" * 58, dport=8472),
             _VNET.pack(NEEDS_CSUM, GSO_TCPV4, 40, 100, 20, 16) + udp(src, dst, b"s" * 300),  # a lie
             _VNET.pack(NEEDS_CSUM, 5, 28, 100, 20, 6) + udp(src, dst, b"u" * 300),  # UDP GSO: not ours
             PLAIN_HDR + b"\x60" + bytes(39),
             PLAIN_HDR + icmp(src, socket.inet_aton("100.100.100.100")),
             _VNET.pack(NEEDS_CSUM, 0, 0, 0, 28, 6) + udp(src, dst, b"d" * 40)]
    for buf in reads:
        a.app.send(buf)
        a.on_tun()
        assert a.handed_tun[-1] == buf, (buf.hex(), a.handed_tun[-1])
        try:
            b.sock.recv(2048)
            raise AssertionError(f"C sent something for {buf.hex()}")
        except BlockingIOError:
            pass
    assert a.plane.express.counts["express_sent"] == 0


def ipv6(src: bytes, dst: bytes, nh: int, body: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(body), nh, 64, src, dst) + body


def case_ipv6_from_the_peers_overlay_address_is_written_in_c():
    """IPv6 inside the overlay: sent by the Python path (C seals IPv4 only), opened in C and
    written to tunneld0 exactly as offload.single writes it (TCP and UDP with the kernel left
    to complete their checksum); a source other than the peer's IPv6 overlay address goes to
    the engine, which drops it as spoofed."""
    a, b = pair()
    a.run_slow = True
    src, dst = (ipaddress.IPv6Address(n.engine.status()["address6"]).packed for n in (a, b))
    cases = [ipv6(src, dst, 58, b"\x80\x00\x00\x00\x00\x01\x00\x01" + b"p" * 56),
             ipv6(src, dst, 17, struct.pack("!HHHH", 5000, 9999, 44, 0x1234) + b"u" * 36),
             ipv6(src, dst, 6, struct.pack("!HHIIBBHHH", 40000, 10250, 7, 1, 0x50, 0x10, 65535, 0, 0) + b"t" * 100)]
    engine_saw = []  # what the C code left to the engine, opened
    opened = b.engine._opened
    b.engine._opened = lambda *args: (engine_saw.append(args[2]), opened(*args))
    for packet in cases:
        got = through(a, b, packet)
        assert got == [b"".join(bytes(x) for x in single(packet))], (packet.hex(), [g.hex() for g in got])
    assert b.plane.express.counts["express_received"] == len(cases) and not b.handed_udp and not engine_saw
    forged = ipv6(ipaddress.IPv6Address("2001:db8:64::6440:99").packed, dst, 58, b"\x80" + bytes(63))
    before = b.engine.drops["spoofed_source"]
    assert through(a, b, forged) == []
    assert b.engine.drops["spoofed_source"] == before + 1 and engine_saw == [forged]
    assert not a.errors and not b.errors


def case_super_packets_are_cut_as_the_python_path_cuts_them():
    """TCP super-packets from tunneld0 (CWR, PSH and FIN set, ECN, a short last segment, one
    segment alone) leave in C as exactly the segments offload.split() cuts, each sealed."""
    a, b = pair()
    catch = redirect(a)
    opener = b.peer().keys.current
    for payload, gso, flags, gso_type in ((4000, 1000, 0x80 | 0x18 | 0x01, GSO_TCPV4), (4321, 1380, 0x18, GSO_TCPV4),
                                          (700, 1380, 0x10, GSO_TCPV4), (3000, 1000, 0x10, GSO_TCPV4 | 0x80)):
        body = bytes(range(256)) * (payload // 256) + b"e" * (payload % 256)
        packet = tcp(a.address, b.address, 0xFFFFF000, body, flags=flags, ident=0xFFFE)
        buf = _VNET.pack(NEEDS_CSUM, gso_type, 40, gso, 20, 16) + packet
        want, reason = split(buf)
        assert not reason
        a.app.send(buf)
        a.on_tun()
        got = [opener.open(msg) for msg in received(catch, len(want) + 1)]
        assert got == want, (len(got), len(want), [g[:40].hex() for g in got], [w[:40].hex() for w in want])
    assert not a.handed_tun and a.plane.express.counts["tun_super_reads"] == 4


def vxlan_super(a, b, payload: int, gso: int, flags: int) -> bytes:
    """flannel's VXLAN as the kernel hands it over whole (tunnel_split.py): the 24-byte header,
    outer IPv4 and UDP to 8472, VXLAN, Ethernet, a pod's TCP segment of payload bytes."""
    pod_a, pod_b = socket.inet_aton("198.18.1.2"), socket.inet_aton("198.18.2.2")
    inner = tcp(pod_a, pod_b, 0x7FFFFFF0, bytes(range(256)) * (payload // 256) + b"p" * (payload % 256),
                flags=flags, ident=0xFFFF)
    inner = inner[:36] + struct.pack("!H", 0xABCD) + inner[38:]  # the partial sum the kernel leaves
    vxlan = b"\x08\x00\x00\x00\x00\x00\x01\x00" + bytes(6) + bytes(6) + b"\x08\x00" + inner
    outer = ipv4(a, b, 17, struct.pack("!HHHH", 41234, 8472, 8 + len(vxlan), 0) + vxlan, ident=0xFFF0)
    inner_nh = 20 + 8 + 8 + 14
    head = _VNET.pack(NEEDS_CSUM, 0x21, inner_nh + 40, gso, inner_nh + 20, 16)
    return head + bytes(10) + struct.pack("<HH", 20, inner_nh) + outer


def case_vxlan_super_packets_are_cut_as_the_python_path_cuts_them():
    """flannel's VXLAN, handed over whole: cut in C into exactly the VXLAN packets
    tunnel_split cuts, each sealed with the inner TCP checksum's place in its DATA header."""
    a, b = pair(tunnel=True)
    catch = redirect(a)
    opener = b.peer().keys.current
    for payload, gso, flags in ((5000, 1330, 0x80 | 0x18), (1000, 1330, 0x10), (2660, 1330, 0x11)):
        buf = vxlan_super(a.address, b.address, payload, gso, flags)
        want, reason = split(buf, 24)
        assert not reason, reason
        a.app.send(buf)
        a.on_tun()
        got = [bytes((wire.PARTIAL, 0, msg[1], 0, msg[2])) + opener.open(msg)
               for msg in received(catch, len(want) + 1)]
        assert got == want, (len(got), len(want), [g[:90].hex() for g in got], [w[:90].hex() for w in want])
    assert not a.handed_tun and a.plane.express.counts["tun_tunnel_reads"] == 3


def case_a_new_path_or_a_stranger_goes_to_python_unopened():
    """DATA from an endpoint we do not send to, for an unknown session, and a handshake
    message go to the Python path as they came: the engine still opens the first (its replay
    window untouched by C) and probes the new path."""
    a, b = pair()
    sealed = a.peer().keys.current.seal(icmp(a.address, b.address))
    other = endpoint()
    other.sendto(sealed, b.sock.getsockname())
    settle(b.sock)
    b.run_slow = True
    b.on_udp()
    data, size, addr, _ = b.handed_udp[-1]
    assert data == sealed and addr == other.getsockname(), (data, addr)
    # the Python path opened it (a first read from a new path) and wrote it
    assert b.written() == [b"".join(bytes(x) for x in single(icmp(a.address, b.address)))]
    b.run_slow = False
    for msg in (sealed[:4] + b"\xee\xee\xee\xee" + sealed[8:], bytes((wire.INIT,)) + bytes(150)):
        a.sock.sendto(msg, b.sock.getsockname())
        settle(b.sock)
        b.on_udp()
        assert b.handed_udp[-1][0] == msg
    assert b.plane.express.counts["express_received"] == 0


def case_replays_and_forgeries_are_dropped_and_counted():
    """A replayed datagram and one with a flipped bit, from the right endpoint: dropped,
    counted by the session's reason, and nothing reaches tunneld0."""
    a, b = pair()
    s = a.peer().keys.current
    sealed = s.seal(icmp(a.address, b.address))
    forged = s.seal(icmp(a.address, b.address))
    for msg in (sealed, sealed, forged[:-1] + bytes((forged[-1] ^ 1,))):
        a.sock.sendto(msg, b.sock.getsockname())
    settle(b.sock)
    b.on_udp()
    assert len(b.written()) == 1
    assert b.drops["replay"] == 1 and b.drops["auth"] == 1, dict(b.drops)
    assert not b.handed_udp


def case_a_train_is_opened_in_c_and_merged():
    """Consecutive TCP segments read from tunneld0 in one callback leave as one UDP train
    (UDP_SEGMENT); the receiver gets it as one GRO read, opens it in C, and tunneld0 gets the
    segments merged into one super-packet."""
    a, b = pair()
    b.sock.setsockopt(17, 104, 1)  # UDP_GRO, as the daemon's socket (udpio.enable_gro)
    partial = _VNET.pack(NEEDS_CSUM, 0, 0, 0, 20, 16)
    segs = [tcp(a.address, b.address, 1000 + i * 1000, bytes([i]) * 1000, ident=i + 1) for i in range(8)]
    for s in segs:
        a.app.send(partial + s)
    a.on_tun()
    settle(b.sock)
    b.on_udp()
    counts_a, counts_b = a.plane.express.counts, b.plane.express.counts
    assert counts_a["udp_gso_sends"] == 1 and counts_b["udp_gro_reads"] == 1, (counts_a, counts_b)
    (merged,) = b.written()
    flags, gso_type, hdr_len, gso_size, *_ = _VNET.unpack_from(merged)
    assert gso_type == GSO_TCPV4 and gso_size == 1000, (gso_type, gso_size)
    assert merged[10 + 40:] == b"".join(bytes([i]) * 1000 for i in range(8))
    assert not a.handed_tun and not b.handed_udp


def case_a_train_with_a_stranger_hands_back_its_rest():
    """A GRO train whose third datagram is not ours to open: the first two are opened in C,
    and the Python path gets the rest of the train from the third on, unopened."""
    a, b = pair()
    b.sock.setsockopt(17, 104, 1)
    s = a.peer().keys.current
    msgs = [s.seal(udp(a.address, b.address, bytes([i]) * 100)) for i in range(5)]
    msgs[2] = msgs[2][:4] + b"\xee\xee\xee\xee" + msgs[2][8:]
    a.sock.sendmsg([b"".join(msgs)], [(17, UDP_SEGMENT, struct.pack("=H", len(msgs[0])))], 0,
                   b.sock.getsockname())
    settle(b.sock)
    b.on_udp()
    assert len(b.written()) == 2
    data, size, _, _ = b.handed_udp[-1]
    assert data == b"".join(msgs[2:]) and size == len(msgs[0]), (len(data), size)


def case_tables_follow_the_engine():
    """A new path and a rekey reach the C tables before the next packet: it leaves for the new
    endpoint, sealed with the new session."""
    a, b = pair()
    other = redirect(a)
    peer = a.peer()
    a.app.send(PLAIN_HDR + icmp(a.address, b.address))
    a.on_tun()
    settle(other)
    got = other.recv(2048)
    assert got[4:8] == peer.keys.current.remote_index
    b.peer().keys.current = None  # b forgets the session: its C table follows
    b.engine.table.sessions.clear()
    b.engine.table.version += 1
    a.sock.sendto(got, b.sock.getsockname())
    settle(b.sock)
    b.on_udp()
    assert b.handed_udp and b.handed_udp[-1][0] == got


def case_relayed_data_crosses_in_c():
    """Peers on the relay's path over UDP: the sender seals in C with the relayed header for
    the relay; the receiver opens RELAYED DATA from its relay in C, with the peer's address in
    the header, and hears that its relay is there. A header naming another node, or one from
    an endpoint that is not the relay, goes to the Python path."""
    a, b = pair()
    relay = endpoint()
    for n in (a, b):
        n.peer().tx_ep, n.peer().tx_prefix = RELAY, n.peer().relayed_prefix
        n.relay = relay.getsockname()
        n.plane.relay_is(n.relay)
    packet = icmp(a.address, b.address)
    a.app.send(PLAIN_HDR + packet)
    a.on_tun()
    settle(relay)
    out = relay.recv(2048)
    assert out[0] == wire.RELAYED and out[4:8] == b.address, out[:8]
    forwarded = out[:4] + a.address + out[8:]  # as the relay hands it on: from whom
    heard = b.engine.relay.last_rx
    relay.sendto(forwarded, b.sock.getsockname())
    settle(b.sock)
    b.on_udp()
    assert b.written() == [b"".join(bytes(x) for x in single(packet))]
    assert b.plane.express.counts["express_received"] == 1 and not b.handed_udp
    assert b.engine.relay.last_rx > heard
    sealed = a.peer().keys.current.seal(packet)
    for msg, sender in ((out[:4] + socket.inet_aton("100.64.9.9") + sealed, relay),
                        (out[:4] + a.address + sealed, a.sock)):
        sender.sendto(msg, b.sock.getsockname())
        settle(b.sock)
        b.on_udp()
        assert b.handed_udp[-1][0] == msg
    assert b.plane.express.counts["express_received"] == 1


def case_a_standing_queue_is_dropped_as_the_backlog_says():
    """backlog.py's rules in C: a read that waited past the target starts a watch and is
    opened; one still waiting when the watch ends is dropped unopened and counted `stale`;
    a fresh one ends the watch."""
    a, b = pair()
    s = a.peer().keys.current
    ping = icmp(a.address, b.address)

    def arrive(wait):
        a.sock.sendto(s.seal(ping), b.sock.getsockname())
        time.sleep(wait)
        b.on_udp()
        return len(b.written())
    assert arrive(backlog.TARGET * 4) == 1 and b.plane.backlog.watch_until > 0
    assert arrive(backlog.INTERVAL * 1.5) == 0 and b.drops["stale"] == 1, dict(b.drops)
    assert arrive(0) == 1 and b.plane.backlog.watch_until == 0
    assert not b.handed_udp


def case_routed_destinations_go_to_their_peer():
    """A destination in a prefix the peer advertises (routed pods) leaves in C for that peer;
    one in no prefix goes to the Python path."""
    a, b = pair()
    catch = redirect(a)
    peer = a.peer()
    net = int.from_bytes(socket.inet_aton("198.18.2.0"), "big")
    a.engine.routes.table = [(net | 0x80, 0xFFFFFF80, peer), (net, 0xFFFFFF00, peer)]
    a.engine.table.version += 1
    for dst in ("198.18.2.9", "198.18.2.200"):
        packet = udp(a.address, socket.inet_aton(dst), b"r" * 40, csum=0)
        a.app.send(PLAIN_HDR + packet)
        a.on_tun()
        settle(catch)
        assert b.peer().keys.current.open(catch.recv(4096)) == packet
    stray = PLAIN_HDR + udp(a.address, socket.inet_aton("198.18.3.1"), b"s" * 40, csum=0)
    a.app.send(stray)
    a.on_tun()
    assert a.handed_tun == [stray]


CASES = {name[5:]: fn for name, fn in globals().items() if name.startswith("case_")}

if __name__ == "__main__":
    CASES[sys.argv[1]]()
    print("ok")
