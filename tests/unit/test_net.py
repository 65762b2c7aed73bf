"""The daemons' socket adapters (net/) against fake sockets: what Batch sends in one sendmsg
(UDP GSO), what receive_batch cuts a GRO read into, and what a FramedStream hands its
daemon. No kernel: the fakes record every call."""

import errno
import socket
import struct
import time
from collections import Counter

from hypothesis import given, strategies as st

from tunneld.drops import Drop
from tunneld.net import backlog, udpio
from tunneld.net.backlog import Backlog
from tunneld.proto import wire
from tunneld.net.base import FramedStream
from tunneld.net.udpio import MAX_BYTES, MAX_SEGMENTS, Batch, receive_batch
from tunneld.proto.framing import frame

A, B = ("198.51.100.1", 4000), ("198.51.100.2", 4000)


class FakeSocket:
    def __init__(self, fail_gso: int | None = None, full: bool = False, mtu: int = 1500):
        self.sent: list[tuple] = []  # ("gso", size, [datagrams], addr) or ("one", datagram, addr)
        self.fail_gso = fail_gso
        self.full = full
        self.mtu = mtu  # the route's, as the kernel checks a train's segments against it
        self.inbox: list[tuple] = []

    def sendmsg(self, bufs, ancillary, flags, addr):
        if self.fail_gso is not None:
            raise OSError(self.fail_gso, "refused")
        (level, kind, value), = ancillary
        assert (level, kind) == (udpio.SOL_UDP, udpio.UDP_SEGMENT)
        size = int.from_bytes(value, "little")
        if size + 28 > self.mtu:
            raise OSError(errno.EMSGSIZE, "Message too long")  # what Linux says
        self.sent.append(("gso", size, list(bufs), addr))

    def sendto(self, data, addr):
        if self.full:
            raise BlockingIOError
        self.sent.append(("one", data, addr))

    def recvmsg(self, size, ancsize):
        return self.inbox.pop(0)

    def recvfrom(self, size):
        data, _, _, addr = self.inbox.pop(0)
        return data, addr


def datagrams_on_the_wire(sock: FakeSocket) -> list[tuple[bytes, tuple]]:
    """What the kernel would put on the wire: a GSO send is cut at its segment size."""
    out = []
    for kind, *rest in sock.sent:
        if kind == "one":
            out.append((rest[0], rest[1]))
        else:
            size, bufs, addr = rest
            whole = b"".join(bufs)
            out += [(whole[i:i + size], addr) for i in range(0, len(whole), size)]
    return out


def batch(sock):
    drops, stats = Counter(), Counter()
    b = Batch(sock, drops, stats)
    b.active = True
    return b, drops, stats


def test_equal_datagrams_to_one_endpoint_leave_in_one_sendmsg():
    sock = FakeSocket()
    b, _, stats = batch(sock)
    for i in range(10):
        b.send(bytes([i]) * 1400, A)
    b.send(b"short", A)  # the last of a train may be short
    b.flush()
    assert [s[0] for s in sock.sent] == ["gso"] and sock.sent[0][1] == 1400
    assert datagrams_on_the_wire(sock) == [(bytes([i]) * 1400, A) for i in range(10)] + [(b"short", A)]
    assert stats["udp_gso_sends"] == 1


def test_a_train_ends_at_another_endpoint_a_larger_datagram_or_after_a_short_one():
    sock = FakeSocket()
    b, _, _ = batch(sock)
    sent = [(b"a" * 1000, A), (b"b" * 1000, A), (b"c" * 1000, B), (b"d" * 500, B), (b"e" * 500, B),
            (b"f" * 900, B), (b"g" * 100, B), (b"h" * 100, B)]
    for data, addr in sent:
        b.send(data, addr)
    b.flush()
    # Trains: [a b] to A; [c d] to B (d is short: it ends the train); [e] alone, because the
    # next one is larger; [f g] (g short); [h].
    assert datagrams_on_the_wire(sock) == sent  # nothing lost, nothing reordered, nothing merged
    trains = [len(s[2]) if s[0] == "gso" else 1 for s in sock.sent]
    assert trains == [2, 2, 1, 2, 1]


def test_a_train_holds_at_most_its_segments_and_bytes():
    sock = FakeSocket()
    b, _, _ = batch(sock)
    for _ in range(MAX_SEGMENTS + 5):
        b.send(b"x" * 100, A)
    for _ in range(MAX_BYTES // 1400 + 3):
        b.send(b"y" * 1400, B)
    b.flush()
    for kind, *rest in sock.sent:
        if kind == "gso":
            assert len(rest[1]) <= MAX_SEGMENTS and sum(map(len, rest[1])) <= MAX_BYTES
    assert len(datagrams_on_the_wire(sock)) == MAX_SEGMENTS + 5 + MAX_BYTES // 1400 + 3


def test_without_gso_the_batch_falls_back_to_single_sends_for_good():
    sock = FakeSocket(fail_gso=errno.EIO)
    b, _, _ = batch(sock)
    for _ in range(3):
        b.send(b"z" * 1000, A)
    b.flush()
    assert not b.gso and [s[0] for s in sock.sent] == ["one"] * 3  # none lost
    sock.fail_gso = None
    for _ in range(3):
        b.send(b"z" * 1000, A)
    b.flush()
    assert [s[0] for s in sock.sent] == ["one"] * 6  # it does not try again


def test_datagrams_larger_than_a_frame_go_alone_in_order_and_never_make_a_train():
    """Directory chunks of a large overlay are several KB: in a train the kernel refuses them
    (EMSGSIZE), alone it fragments them. Seen with 500 nodes: every snapshot was lost."""
    sock = FakeSocket()
    b, drops, stats = batch(sock)
    sent = [(b"s" * 100, A), (b"c" * 6000, A), (b"c" * 6000, A), (b"c" * 5000, A), (b"s" * 100, A)]
    for data, addr in sent:
        b.send(data, addr)
    b.flush()
    assert datagrams_on_the_wire(sock) == sent and not drops
    assert [s[0] for s in sock.sent] == ["one"] * 5 and not stats  # not even tried as a train


def test_a_train_too_big_for_a_smaller_route_goes_one_by_one_and_gso_stays_on():
    sock = FakeSocket(mtu=1400)  # a 1400-byte path: 1472-byte datagrams fit no train on it
    b, drops, stats = batch(sock)
    sent = [(b"x" * 1472, A)] * 3
    for data, addr in sent:
        b.send(data, addr)
    b.flush()
    assert datagrams_on_the_wire(sock) == sent and not drops and stats["udp_gso_too_big"] == 1
    for _ in range(3):
        b.send(b"y" * 1000, A)
    b.flush()
    assert b.gso and sock.sent[-1][0] == "gso"  # smaller ones still leave as a train


def test_a_full_socket_is_counted_not_raised():
    sock = FakeSocket(full=True)
    b, drops, _ = batch(sock)
    b.active = False
    b.send(b"x", A)  # outside a batch: sent at once
    assert drops[Drop.UDP_SEND_FULL] == 1 and not sock.sent


@given(st.lists(st.tuples(st.integers(1, 1500), st.sampled_from([A, B])), max_size=200))
def test_any_sequence_arrives_whole_and_in_order(sends):
    sock = FakeSocket()
    b, _, _ = batch(sock)
    sent = [(bytes([i % 256]) * n, addr) for i, (n, addr) in enumerate(sends)]
    for data, addr in sent:
        b.send(data, addr)
    b.flush()
    assert datagrams_on_the_wire(sock) == sent


def test_a_gro_read_is_cut_back_into_its_datagrams():
    sock = FakeSocket()
    gro = [(udpio.SOL_UDP, udpio.UDP_GRO, (1400).to_bytes(4, "little"))]
    sock.inbox = [(b"a" * 1400 + b"b" * 1400 + b"c" * 10, gro, 0, A), (b"plain", [], 0, B)]
    assert receive_batch(sock, True) == ([b"a" * 1400, b"b" * 1400, b"c" * 10], A, 0.0)
    assert receive_batch(sock, True) == ((b"plain",), B, 0.0)


def stamped(t: float) -> tuple:
    return (socket.SOL_SOCKET, backlog.SO_TIMESTAMPNS, struct.pack("=qq", int(t), int(t % 1 * 1e9)))


DATA = bytes([wire.DATA]) + bytes(99)
RELAYED_DATA = bytes([wire.RELAYED]) + bytes(7) + DATA[:92]
INIT = bytes([wire.INIT]) + bytes(99)


def test_a_loop_that_paused_catches_up_on_what_waited_and_drops_nothing():
    """A node whose loop was held up for half a second finds its queue old on waking; it
    works through it well within INTERVAL, so that is a burst, not a standing queue."""
    b = Backlog(keep=B)
    now = 1000.0
    for i in range(200):  # 200 reads, the last of them done 20 ms after waking
        assert not b.stale(DATA, A, 0.5 - i * 0.0025, now + i * 0.0001)
    assert not b.stale(DATA, A, 0.001, now + 0.03)


def test_a_standing_queue_drops_the_peers_data_unopened_until_a_read_is_fresh():
    b = Backlog(keep=B)
    t = 1000.0
    assert not b.stale(DATA, A, backlog.TARGET * 2, t)  # the watch starts
    assert not b.stale(DATA, A, backlog.TARGET * 2, t + backlog.INTERVAL / 2)  # still a burst, maybe
    late = t + backlog.INTERVAL
    assert b.stale(DATA, A, 1.0, late) and b.stale(RELAYED_DATA, B, 1.0, late)  # a standing queue
    assert not b.stale(INIT, A, 1.0, late)  # a handshake is read however late
    assert not b.stale(DATA, B, 1.0, late)  # so is the relay's DATA: its link's control, pongs
    assert not b.stale(DATA, A, backlog.TARGET / 2, late)  # fresh: the queue has drained
    assert not b.stale(DATA, A, 1.0, late + 0.001)  # and a new watch starts over
    # on the relay (keep None) only relayed data is the peers'; a node's DATA is its control
    r = Backlog()
    r.stale(DATA, A, 1.0, t)
    assert not r.stale(DATA, A, 1.0, late) and r.stale(RELAYED_DATA, A, 1.0, late)


def test_stale_trains_are_counted_and_never_reach_the_engine():
    now = time.time()
    gro = (udpio.SOL_UDP, udpio.UDP_GRO, (100).to_bytes(4, "little"))
    sock = FakeSocket()
    old = now - 1.0
    sock.inbox = [(DATA * 3, [gro, stamped(old)], 0, A), (DATA * 2, [stamped(old), gro], 0, A),
                  (INIT, [stamped(old)], 0, A), (DATA, [stamped(old)], 0, B), (DATA * 2, [gro, stamped(now)], 0, A),
                  (DATA, [], 0, A)]
    b = Backlog(keep=B)
    b.watch_until = now - 1  # a queue already standing
    drops, stats = Counter(), Counter()
    got = [udpio.read(sock, True, drops, stats, b) for _ in range(6)]
    assert [(len(d), addr) for d, addr in got] == [(0, A), (0, A), (1, A), (1, B), (2, A), (1, A)]
    assert drops[Drop.STALE] == 5


class FakeDaemon:
    def __init__(self):
        self.drops = Counter()
        self.got = []
        self.batches = 0

    def receive(self, data, ep, now):
        self.got.append((data, ep))

    def after_input(self):
        self.batches += 1


class FakeTransport:
    def __init__(self):
        self.aborted = False
        self.written = b""

    def get_extra_info(self, name):
        return None

    def abort(self):
        self.aborted = True

    def write(self, data):
        self.written += data


@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=10), st.integers(1, 50))
def test_a_framed_stream_hands_whole_messages_to_its_daemon_in_any_pieces(msgs, piece):
    d = FramedStream(FakeDaemon())
    d.endpoint = "stream"
    d.connection_made(FakeTransport())
    stream = b"".join(frame(m) for m in msgs)
    for i in range(0, len(stream), piece):
        d.data_received(stream[i:i + piece])
    assert d.daemon.got == [(m, "stream") for m in msgs]
    assert d.daemon.batches == -(-len(stream) // piece)  # after every read, the daemon gets its turn
    d.count_truncated()
    assert not d.daemon.drops


def test_a_stream_that_breaks_the_framing_is_cut_and_counted():
    d = FramedStream(FakeDaemon())
    t = FakeTransport()
    d.connection_made(t)
    d.data_received(frame(b"ok") + b"\x00\x00")  # a zero length: nothing legitimate is empty
    assert t.aborted and d.daemon.drops[Drop.TCP_BAD_FRAMING] == 1 and d.daemon.got == []


def test_a_frame_cut_off_at_close_is_counted():
    d = FramedStream(FakeDaemon())
    d.connection_made(FakeTransport())
    d.data_received(frame(b"whole") + frame(b"half")[:3])
    d.count_truncated()
    assert d.daemon.got == [(b"whole", None)] and d.daemon.drops[Drop.TCP_TRUNCATED_FRAME] == 1


def test_send_frame_writes_the_length_first():
    d = FramedStream(FakeDaemon())
    t = FakeTransport()
    d.connection_made(t)
    d.send_frame(b"abc")
    assert t.written == b"\x00\x03abc"



class FakeEngine:
    def __init__(self):
        self.bound_streams = set()

    def bound(self, stream):
        return stream in self.bound_streams

    def link_closed(self, stream):
        pass


class FakeRelayDaemon(FakeDaemon):
    def __init__(self):
        super().__init__()
        self.streams = set()
        self.fresh = set()
        self.per_source = Counter()
        self.engine = FakeEngine()


class PeerTransport(FakeTransport):
    def __init__(self, host):
        super().__init__()
        self.host = host

    def get_extra_info(self, name):
        return (self.host, 40000) if name == "peername" else None

    def is_closing(self):
        return self.aborted

    def get_write_buffer_size(self):
        return 0


def test_tcp_streams_are_capped_per_source_and_unauthenticated_ones_overall():
    """Finding: one global cap of 4,096 streams and no per-source cap; streams that never
    authenticate held 30 s, and up to ~256 MB of partial frames between them."""
    from tunneld.net import relayd
    d = FakeRelayDaemon()
    opened = []
    for i in range(relayd.MAX_STREAMS_PER_SOURCE + 10):  # one source opens many
        s, t = relayd.NodeStream(d), PeerTransport("198.51.100.66")
        s.connection_made(t)
        opened.append(t)
    assert sum(not t.aborted for t in opened) == relayd.MAX_STREAMS_PER_SOURCE
    assert d.drops[Drop.TCP_TOO_MANY_FROM_SOURCE] == 10
    for i in range(relayd.MAX_UNAUTHENTICATED + 50):  # many sources, none authenticating
        relayd.NodeStream(d).connection_made(PeerTransport(f"10.{i // 250}.{i % 250}.1"))
    assert sum(1 for s in d.streams if not d.engine.bound(s)) <= relayd.MAX_UNAUTHENTICATED
    assert d.drops[Drop.TCP_TOO_MANY_STREAMS] >= 50
    # what they can hold back in partial frames is bounded
    assert relayd.MAX_UNAUTHENTICATED * 65536 <= 64 << 20 and relayd.TCP_AUTH_TIMEOUT <= 10
    # once a stream authenticates it no longer counts against strangers: a new one gets in
    d.engine.bound_streams.add(next(iter(d.streams)))
    t = PeerTransport("192.0.2.50")
    relayd.NodeStream(d).connection_made(t)
    assert not t.aborted


def test_the_relays_trains_hold_one_lane_each():
    """The relay forwards several processes' DATA to one node: a train it sends must hold one
    lane only, as the node's kernel steers the whole train by its first datagram's lane."""
    sock = FakeSocket()
    drops, stats = Counter(), Counter()
    b = Batch(sock, drops, stats, lanes=True)
    b.active = True

    def relayed(lane: int, i: int) -> bytes:
        data = bytes((wire.DATA, 0, 0, 0)) + b"idx!" + bytes((lane,)) + bytes(7) + bytes([i]) * 1000
        return wire.relayed_header(b"\x64\x40\x00\x02") + data
    sent = [relayed(lane, i) for i, lane in enumerate((0, 0, 1, 1, 1, 0))]
    for data in sent:
        b.send(data, A)
    b.flush()
    # [0 0] and [1 1 1] in a train each, the last 0 alone (trains were [0 0 1 1 1 0] before)
    assert [len(s[2]) if s[0] == "gso" else 1 for s in sock.sent] == [2, 3, 1]
    assert datagrams_on_the_wire(sock) == [(d, A) for d in sent]


def test_an_overlay_that_holds_the_relay_or_a_network_of_the_host_is_refused_by_name():
    import ipaddress
    from tunneld.engine.routes import overlay_conflict
    net = ipaddress.IPv4Network("100.64.0.0/10")
    assert overlay_conflict(net, ["192.0.2.1"], [("eth0's address", "198.51.100.0/24")]) is None
    code, message = overlay_conflict(net, ["100.64.0.9"], [])
    assert code == "relay_in_overlay" and "100.64.0.9 lies inside the overlay network 100.64.0.0/10" in message
    code, message = overlay_conflict(net, ["192.0.2.1"], [("the resolver 100.64.5.5", "100.64.5.5/32")])
    assert code == "overlay_overlaps_host" and "overlaps the resolver 100.64.5.5" in message
    # the ranges the registry never hands out may hold the host's things (a cloud's DNS and metadata)
    assert overlay_conflict(net, ["192.0.2.1"], [("the resolver 100.100.100.100", "100.100.100.100/32")]) is None
