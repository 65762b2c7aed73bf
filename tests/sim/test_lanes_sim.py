"""A node's workers as lanes (engine/lanes.py, proto/session.py), in memory: the node
engines and the relay of simnet.py, and beside a node's engine a Lane fed with the table
export() gives it, as a worker process is. Steering is modelled as the kernel's program
does it (net/steer.py): DATA in lane L goes to lane L mod N of the receiver."""

import msgpack
import pytest

from tunneld.engine.lanes import LIMBO, Lane, export, lane_of
from tunneld.proto import wire
from tunneld.proto.endpoint import RELAY
from tunneld.proto.version import Hello
from tests.sim.simnet import SimNet, ipv4_packet


class LaneIO:
    """A worker's output, recorded; sends go into the simulated network as the node's would."""

    def __init__(self, net, name):
        self.net, self.name = net, name
        self.tun, self.handed, self.events, self.unreadable_from, self.passed_on = [], [], [], [], []

    def send(self, ep, data):
        self.net.ios[self.name].send(ep, data)

    def write_tun(self, packet):
        self.tun.append(packet)

    def to_engine(self, packet):
        self.handed.append(packet)

    def event(self, index, plaintext, via):
        self.events.append((index, plaintext, via))

    def unreadable(self, addr):
        self.unreadable_from.append(addr)

    def elsewhere(self, data, ep):
        self.passed_on.append((data, ep))


class Workers:
    """Lanes 1..n-1 beside each named node; the tap steers their datagrams."""

    def __init__(self, net, counts: dict):
        self.net, self.counts = net, counts
        self.lanes = {name: {k: Lane(k, LaneIO(net, name)) for k in range(1, n)} for name, n in counts.items()}
        self.sync()
        net.tap = self.steer

    def sync(self, *names):
        for name, lanes in self.lanes.items():
            if names and name not in names:
                continue
            table = msgpack.unpackb(msgpack.packb(export(self.net.nodes[name], relay_udp=True)))
            table["lanes"] = self.counts[name]
            for lane in lanes.values():
                lane.apply(table)

    def steer(self, dst, data, src):
        name = dst if isinstance(dst, str) else None
        if isinstance(dst, tuple) and dst[0] != "direct":
            name = self.net.by_endpoint.get(dst)
        n = self.counts.get(name)
        if not n or lane_of(data) % n == 0:
            return data
        self.lanes[name][lane_of(data) % n].receive(data, RELAY if src == "relay" else src, self.net.now)
        return None


def packet(net, src, dst, payload):
    return ipv4_packet(net.nodes[src].assignment.address, net.nodes[dst].assignment.address, payload)


@pytest.fixture
def net():
    n = SimNet()
    for name in ("alpha", "bravo"):
        n.add_node(name)
    n.advance(2)
    n.send_ip("alpha", "bravo", b"first")  # a session, handshaken by the engines
    n.send_ip("bravo", "alpha", b"answer")  # which confirms it on bravo's side
    return n


def test_each_lane_seals_in_its_own_counters_and_the_receivers_lane_opens_them(net):
    w = Workers(net, {"alpha": 3, "bravo": 2})
    for i in range(4):
        w.lanes["alpha"][1].from_tun(packet(net, "alpha", "bravo", b"lane1 %d" % i), net.now)
        w.lanes["alpha"][2].from_tun(packet(net, "alpha", "bravo", b"lane2 %d" % i), net.now)
        net.nodes["alpha"].from_tun(packet(net, "alpha", "bravo", b"lane0 %d" % i), net.now)
    sent = []  # what the relay forwards to bravo

    def capture(dst, data, src):
        if src == "relay":
            sent.append(data)
        return w.steer(dst, data, src)

    net.tap = capture
    net.deliver()
    counters = [int.from_bytes(d[16:24], "big") for d in sent if d[8] == wire.DATA]
    assert sorted(c for c in counters if c >> 56) == [k << 56 | n for k in (1, 2) for n in range(4)]
    assert len([c for c in counters if not c >> 56]) >= 4  # the engine's own, lane 0
    # bravo has 2 lanes: lane 1 to its worker; lanes 0 and 2 (2 mod 2) to its engine
    assert [p[-7:] for p in w.lanes["bravo"][1].out.tun] == [b"lane1 %d" % i for i in range(4)]
    got = [p[-7:] for p in net.ios["bravo"].tun]
    assert all(b"lane0 %d" % i in got and b"lane2 %d" % i in got for i in range(4))
    # every one of them again: each dropped as a replay, by whichever lane holds its window
    bravo = net.nodes["bravo"]
    before = bravo.drops["replay"]
    for d in sent:
        if d[8] == wire.DATA:
            net.queue.append((net.ios["bravo"].endpoint, d, "relay"))
    net.tap = w.steer
    net.deliver()
    assert w.lanes["bravo"][1].drops["replay"] == 4
    assert bravo.drops["replay"] - before == len([d for d in sent if d[8] == wire.DATA and lane_of(d) % 2 == 0])
    assert len(w.lanes["bravo"][1].out.tun) == 4


def test_a_receiver_with_one_process_keeps_a_window_per_lane(net):
    """Lanes interleave, each far ahead of the others in counter: none makes another's stale."""
    w = Workers(net, {"alpha": 2})
    for i in range(3):
        w.lanes["alpha"][1].from_tun(packet(net, "alpha", "bravo", b"one %d" % i), net.now)
        net.nodes["alpha"].from_tun(packet(net, "alpha", "bravo", b"zero %d" % i), net.now)
    net.deliver()
    got = b"|".join(net.ios["bravo"].tun)
    assert all(b"one %d" % i in got for i in range(3)) and all(b"zero %d" % i in got for i in range(3))
    bravo = net.nodes["bravo"]
    (s,) = [x for x in bravo.table.sessions.values() if x.window_top(1) >= 0]
    assert s.window_top(1) == (1 << 56) + 2 and 0 <= s.window_top(0) < 1 << 56 and s.window_top(2) == -1


def test_a_table_taken_again_keeps_the_counters_and_a_dropped_session_never_returns(net):
    w = Workers(net, {"alpha": 2})
    lane = w.lanes["alpha"][1]
    (s,) = [p.session for p in lane.peers.values()]
    lane.from_tun(packet(net, "alpha", "bravo", b"x"), net.now)
    lane.from_tun(packet(net, "alpha", "bravo", b"y"), net.now)
    assert s.send_counter == (1 << 56) + 2
    table = msgpack.unpackb(msgpack.packb(dict(export(net.nodes["alpha"], relay_udp=True), lanes=2)))
    lane.apply(table)
    assert [p.session for p in lane.peers.values()] == [s] and s.send_counter == (1 << 56) + 2
    without = dict(table, sessions=[], peers=[[*p[:-1], None] for p in table["peers"]])
    lane.apply(without)
    lane.apply(table)  # the same keys again: a counter from 0 would reuse nonces
    assert all(p.session is None for p in lane.peers.values()) and not lane.sessions
    lane.from_tun(packet(net, "alpha", "bravo", b"z"), net.now)
    assert lane.out.handed and lane.out.handed[-1].endswith(b"z")  # the engine sends it instead


def test_a_peer_that_does_not_read_lanes_gets_only_lane_zero(net):
    alpha = net.nodes["alpha"]
    (peer,) = alpha.peers.values()
    peer.said = Hello(2, 1, frozenset({"hello", "ep-proof"}))  # what 0.3.0 says
    table = export(alpha, relay_udp=True)
    assert table["sessions"] == [] and table["peers"][0][-1] is None
    w = Workers(net, {"alpha": 2})
    w.lanes["alpha"][1].from_tun(packet(net, "alpha", "bravo", b"old"), net.now)
    assert w.lanes["alpha"][1].out.handed  # to the engine, which seals in lane 0


def test_over_the_relays_tcp_stream_the_lane_hands_its_packets_to_the_engine(net):
    w = Workers(net, {"alpha": 2})
    lane = w.lanes["alpha"][1]
    table = dict(export(net.nodes["alpha"], relay_udp=False), lanes=2)
    lane.apply(msgpack.unpackb(msgpack.packb(table)))
    lane.from_tun(packet(net, "alpha", "bravo", b"tcp"), net.now)
    assert lane.out.handed and not net.queue


def test_what_only_the_engine_can_act_on_is_handed_to_it(net):
    """A probe, and data from a path it does not send on, go to the engine as events;
    data for a session the lane lacks asks for a re-handshake, at most once a second."""
    w = Workers(net, {"bravo": 2})
    lane = w.lanes["bravo"][1]
    alpha = net.nodes["alpha"]
    (peer,) = alpha.peers.values()
    s = peer.keys.current
    s.send_counter, s.send_limit = 1 << 56, 2 << 56  # alpha seals in lane 1 as its worker would
    from_alpha = wire.relayed_header(bytes(map(int, alpha.assignment.address.split("."))))
    probe = s.seal(bytes((wire.PROBE_REQUEST,)) + bytes(8), from_alpha)
    lane.receive(probe, RELAY, net.now)
    assert lane.out.events and lane.out.events[-1][1][0] == wire.PROBE_REQUEST
    forged = bytearray(s.seal(b"", from_alpha))
    forged[12:16] = b"nope"  # an index nobody has
    for _ in range(5):
        lane.receive(bytes(forged), RELAY, net.now)
    assert not lane.drops and len(lane.limbo) == 5  # a table may yet bring the session
    lane.report(net.now + 0.1)
    assert len(lane.limbo) == 5  # held for half a second, far longer than a table takes
    report = lane.report(net.now + 1)
    assert report["drops"] == {"unknown_session": 5} and len(lane.out.unreadable_from) == 1 and not lane.limbo
    spoof = s.seal(ipv4_packet("100.64.0.99", net.nodes["bravo"].assignment.address, b"spoof"), from_alpha)
    lane.receive(spoof, RELAY, net.now)
    assert lane.drops["spoofed_source"] == 1 and not lane.out.tun


def test_a_datagram_of_another_lane_in_a_workers_train_is_passed_on_unopened(net):
    """The kernel steers a GRO train by its first datagram; the rest may be any lane's, or
    no DATA at all. A lane opens only its own: a window per lane, in one process."""
    w = Workers(net, {"bravo": 3})
    lane = w.lanes["bravo"][1]
    alpha = net.nodes["alpha"]
    (peer,) = alpha.peers.values()
    s = peer.keys.current
    from_alpha = wire.relayed_header(bytes(map(int, alpha.assignment.address.split("."))))
    s.send_counter, s.send_limit = 2 << 56, 3 << 56  # lane 2: worker 2's
    other = s.seal(ipv4_packet(alpha.assignment.address, net.nodes["bravo"].assignment.address, b"x"), from_alpha)
    s.send_counter, s.send_limit = 4 << 56, 5 << 56  # lane 4 = 1 mod 3: ours
    ours = s.seal(ipv4_packet(alpha.assignment.address, net.nodes["bravo"].assignment.address, b"y"), from_alpha)
    handshake = from_alpha + bytes((wire.INIT,)) + bytes(100)
    for d in (other, ours, handshake):
        lane.receive(d, RELAY, net.now)
    assert [d for d, _ in lane.out.passed_on] == [other, handshake]
    assert len(lane.out.tun) == 1 and lane.out.tun[0].endswith(b"y")
    assert not lane.drops


def test_after_a_rekey_the_lanes_seal_with_the_new_keys_and_forget_the_old(net):
    w = Workers(net, {"alpha": 2, "bravo": 2})
    (old,) = [p.session for p in w.lanes["alpha"][1].peers.values()]
    for _ in range(100):  # 200 s of traffic: past REKEY_AFTER_TIME (120 s), and the old keys' REJECT_AFTER_TIME (180 s)
        net.send_ip("alpha", "bravo", b"tick")
        net.send_ip("bravo", "alpha", b"tock")
        net.advance(2)
        w.sync()
    (new,) = [p.session for p in w.lanes["alpha"][1].peers.values()]
    assert new is not None and new is not old and old.local_index not in w.lanes["alpha"][1].sessions
    assert old.local_index in w.lanes["alpha"][1].retired
    net.tap = w.steer
    w.lanes["alpha"][1].from_tun(packet(net, "alpha", "bravo", b"after rekey"), net.now)
    net.deliver()
    assert w.lanes["bravo"][1].out.tun[-1].endswith(b"after rekey")


def test_a_revoked_peer_leaves_every_lane(net):
    w = Workers(net, {"alpha": 2})
    assert net.relay.revoke("bravo")
    net.advance(2)
    w.sync()
    lane = w.lanes["alpha"][1]
    assert not lane.peers and not lane.sessions
    lane.from_tun(packet(net, "alpha", "bravo", b"to the revoked"), net.now)
    assert lane.drops["tun_no_peer"] == 1 and not net.queue


def test_relayed_data_a_worker_opens_tells_the_engine_its_relay_is_there(net):
    """With several relays a node takes its home for dead after a second without a word from
    it, and a relay under a flood may drop the pongs: the relayed data its workers open must
    count as a word, a few times a second, not per packet."""
    w = Workers(net, {"bravo": 2})
    lane = w.lanes["bravo"][1]
    alpha, bravo = net.nodes["alpha"], net.nodes["bravo"]
    (peer,) = alpha.peers.values()
    s = peer.keys.current
    s.send_counter, s.send_limit = 1 << 56, 2 << 56  # alpha seals in lane 1 as its worker would
    from_alpha = wire.relayed_header(bytes(map(int, alpha.assignment.address.split("."))))
    t0 = net.now
    for i in range(40):  # one second of relayed data
        lane.receive(s.seal(packet(net, "alpha", "bravo", b"d %d" % i), from_alpha), RELAY, t0 + i * 0.025)
    assert len(lane.out.tun) == 40
    heard = [e for e in lane.out.events if e[2] is RELAY and e[1] == b""]
    assert 3 <= len(heard) <= 5
    bravo.relay.last_rx = t0 - 5
    for index, plaintext, via in heard:
        bravo.from_worker(index, plaintext, via, t0 + 1)
    assert bravo.relay.last_rx == t0 + 1


def test_data_on_new_keys_that_reaches_a_worker_before_its_table_waits_for_it(net):
    """A rekey: the peer's first data on the new session can reach our worker before the
    engine's table with that session does (two processes, one busy core). The worker holds
    it until the table comes, and opens it then: nothing lost, nothing opened twice."""
    w = Workers(net, {"alpha": 2, "bravo": 2})
    alpha = net.nodes["alpha"]
    (peer,) = alpha.peers.values()
    old = peer.keys.current
    alpha.handshakes.initiate(peer, net.now)
    net.deliver()  # INIT, RESP and alpha's keepalive on the new keys: the engines agree
    assert peer.keys.current is not old
    w.sync("alpha")  # alpha's worker seals with the new keys; bravo's has not heard of them
    lane = w.lanes["bravo"][1]
    assert peer.keys.current.local_index not in [s.remote_index for s, _ in lane.sessions.values()]
    for i in range(3):
        w.lanes["alpha"][1].from_tun(packet(net, "alpha", "bravo", b"new keys %d" % i), net.now)
    net.deliver()
    assert not lane.out.tun and len(lane.limbo) == 3 and not lane.drops
    w.sync("bravo")
    assert [p[-10:] for p in lane.out.tun] == [b"new keys %d" % i for i in range(3)]
    assert not lane.limbo and not lane.drops and not lane.out.unreadable_from
    w.sync("bravo")  # the same table again: nothing is opened a second time
    assert len(lane.out.tun) == 3


def test_the_limbo_is_bounded_and_what_overflows_is_dropped_and_counted(net):
    w = Workers(net, {"bravo": 2})
    lane = w.lanes["bravo"][1]
    alpha = net.nodes["alpha"]
    (peer,) = alpha.peers.values()
    s = peer.keys.current
    s.send_counter, s.send_limit = 1 << 56, 2 << 56
    from_alpha = wire.relayed_header(bytes(map(int, alpha.assignment.address.split("."))))
    forged = bytearray(s.seal(b"", from_alpha))
    forged[12:16] = b"nope"
    for _ in range(LIMBO + 10):
        lane.receive(bytes(forged), RELAY, net.now)
    assert len(lane.limbo) == LIMBO and lane.drops["unknown_session"] == 10
    lane.apply(lane_table(net, "bravo"))  # a table without it: dropped, counted, once
    assert not lane.limbo and lane.drops["unknown_session"] == LIMBO + 10


def lane_table(net, name, lanes=2):
    return msgpack.unpackb(msgpack.packb(dict(export(net.nodes[name], relay_udp=True), lanes=lanes)))


def test_a_super_packets_segments_are_routed_once_and_each_sealed_in_order(net):
    """One read from tunneld0 is a train (from_tun_train): each segment sealed in our lane,
    in order, the peer's byte count the train's; a train for no peer counts each packet."""
    w = Workers(net, {"alpha": 2})
    lane = w.lanes["alpha"][1]
    sent = []
    forward = lane.out.send
    lane.out.send = lambda ep, data: (sent.append((ep, data)), forward(ep, data))
    segs = [packet(net, "alpha", "bravo", b"segment %d" % i) for i in range(5)]
    lane.from_tun_train(segs, net.now)
    (peer,) = lane.peers.values()
    assert [int.from_bytes(d[16:24], "big") for _, d in sent] == [(1 << 56) + i for i in range(5)]
    assert len({ep for ep, _ in sent}) == 1 and peer.tx_bytes == sum(len(p) for p in segs)
    net.deliver()
    assert [p[-9:] for p in net.ios["bravo"].tun[-5:]] == [b"segment %d" % i for i in range(5)]
    lane.from_tun_train([ipv4_packet(net.nodes["alpha"].assignment.address, "100.64.9.9", b"x")] * 3, net.now)
    assert lane.drops["tun_no_peer"] == 3 and len(sent) == 5


def test_the_engine_queues_a_whole_train_while_its_handshake_runs():
    n = SimNet()
    for name in ("alpha", "bravo"):
        n.add_node(name)
    n.advance(2)
    alpha = n.nodes["alpha"]
    segs = [packet(n, "alpha", "bravo", b"early %d" % i) for i in range(3)]
    alpha.from_tun_train(segs, n.now)  # no session yet: all three wait for the handshake
    n.deliver()
    assert [p[-7:] for p in n.ios["bravo"].tun] == [b"early %d" % i for i in range(3)]
