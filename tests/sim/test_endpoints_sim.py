"""A member's endpoint at the relay: it moves only to where the member really is, and what a
ping can make the relay send is bounded. The attacker here is a member (its token leaked)
that can forge the source address of its own, authenticated, packets."""

import pytest

from tunneld.control.directory import Entry
from tunneld.engine.channel import seal_control
from tunneld.engine.relay import SNAPSHOT_EVERY
from tunneld.proto.version import Hello
from tests.sim.simnet import SimNet

THIRD_PARTY = ("198.51.100.77", 53)  # someone outside the overlay


def forged_ping(net, name, version=None, n=1):
    """`name`'s own authenticated ping, to be sent "from" any address."""
    return seal_control(net.nodes[name].relay.keys, {"t": "ping", "n": n, "v": version})


def relayed_reaches(net, src, dst) -> bool:
    packet = net.send_ip(src, dst, b"relayed")
    net.advance(0.5)
    return packet in net.ios[dst].tun


@pytest.fixture
def net():
    net = SimNet()
    for name in ("victim", "mallory", "bravo"):
        net.add_node(name)  # blocked NATs: victim and bravo talk through the relay only
    net.advance(3)
    return net


@pytest.mark.parametrize("mallory_speaks", ["0.3.0", "0.2.0"])
def test_a_member_cannot_take_another_members_endpoint(net, mallory_speaks):
    """Finding: one of mallory's authenticated pings sent "from" the victim's endpoint took
    that endpoint over: relayed traffic to the victim was dropped until it rekeyed, and one
    such packet every 2 minutes kept it off. A 0.2.0 member moves without a round trip, but
    never onto an endpoint another member is using."""
    relay = net.relay
    victim_ep = net.ios["victim"].endpoint
    assert relayed_reaches(net, "bravo", "victim")
    for i in range(6):  # three minutes, a forged ping every 30 s
        if mallory_speaks == "0.2.0":  # (again after each of its rekeys, which say what it speaks)
            relay.members[net.nodes["mallory"].identity.public].hello = Hello(2, 1, frozenset({"hello"}))
        relay.receive(forged_ping(net, "mallory", n=100 + i), victim_ep, net.now)
        net.advance(0.5)
        assert relay.by_endpoint[victim_ep].name == "victim"
        assert relayed_reaches(net, "bravo", "victim")
        net.advance(29)
    assert relay.drops["endpoint_unproven" if mallory_speaks == "0.3.0" else "endpoint_in_use"] >= 6
    assert relayed_reaches(net, "mallory", "bravo")  # mallory itself still works from where it is


def test_a_ping_from_a_forged_address_gets_no_directory_sent_there(net):
    """Finding: a ping reporting an old directory version got a full snapshot back (2,000
    members: 47 bytes in, 148,824 out), and any authenticated packet from a new address
    moved the member there: the snapshot could be aimed at a third party."""
    relay = net.relay
    for i in range(2000):
        relay.directory.set(Entry(f"member-{i}", bytes([100, 65, i // 256, i % 256]), bytes([i % 256]) * 32, True,
                                  f"203.0.113.{i % 250}:{40000 + i}", 1500, (), ()))
    relay.directory.publish()
    sent = []
    relay.send = lambda ep, data: sent.append((ep, len(data)))
    net.now += 10
    data_in = 0
    for i in range(100):
        ping = forged_ping(net, "mallory", version=1, n=200 + i)
        data_in += len(ping)
        relay.receive(ping, THIRD_PARTY, net.now)
        net.now += 0.01
    to_third = sum(n for ep, n in sent if ep == THIRD_PARTY)
    assert to_third <= 2 * data_in  # a few proofs, about ping-sized: no amplification
    assert relay.by_endpoint.get(THIRD_PARTY) is None


def test_a_member_asking_for_snapshots_gets_one_per_interval(net):
    """What one member can make the relay send itself is bounded too."""
    relay = net.relay
    for i in range(500):
        relay.directory.set(Entry(f"member-{i}", bytes([100, 65, 0, i % 256]) if i < 256 else
                                  bytes([100, 65, 1, i % 256]), bytes([i % 256]) * 32, True, "", 1500, (), ()))
    relay.directory.publish()
    mallory_ep = net.ios["mallory"].endpoint
    sent = []
    relay.send = lambda ep, data: sent.append((ep, len(data)))
    seconds = 10
    for i in range(seconds * 100):  # 100 pings a second, each reporting a stale version
        relay.receive(forged_ping(net, "mallory", version=1, n=300 + i), mallory_ep, net.now)
        net.now += 0.01
    snapshot = sum(len(m) for m in [relay.directory.snapshot()])  # chunks in one snapshot
    chunks = sum(1 for ep, n in sent if ep == mallory_ep and n > 1000)
    assert chunks <= (seconds / SNAPSHOT_EVERY + 1) * snapshot
    assert relay.drops["snapshot_rate_limited"] > 900


def test_a_node_whose_nat_mapping_changes_is_followed_after_a_round_trip(net):
    """The reason endpoints move at all: a NAT that gives the node a new port."""
    relay = net.relay
    io = net.ios["victim"]
    old = io.endpoint
    new = ("203.0.113.9", 55555)
    io.endpoint = new
    del net.by_endpoint[old]
    net.by_endpoint[new] = "victim"
    net.advance(6)  # its next ping comes from the new mapping
    assert relay.by_endpoint.get(new) is not None and relay.by_endpoint[new].name == "victim"
    assert old not in relay.by_endpoint
    assert relayed_reaches(net, "bravo", "victim")


def test_a_member_held_back_gets_its_directory_when_its_interval_is_over(net):
    """The limit delays a full directory; it does not wait for the member's next ping."""
    relay = net.relay
    for i in range(300):
        relay.directory.set(Entry(f"member-{i}", bytes([100, 66, i // 256, i % 256]), bytes([i % 256]) * 32, True,
                                  "", 1500, (), ()))
    relay.directory.publish()
    mallory_ep = net.ios["mallory"].endpoint
    sent = []
    relay.send = lambda ep, data: sent.append((ep, len(data)))
    start = net.now
    relay.receive(forged_ping(net, "mallory", version=1, n=900), mallory_ep, start)  # a snapshot
    relay.directory.set(Entry("late", bytes([100, 67, 0, 1]), bytes(32), True, "", 1500, (), ()))
    relay.directory.publish()
    relay.receive(forged_ping(net, "mallory", version=1, n=901), mallory_ep, start + 0.1)  # held back
    sent.clear()
    relay.tick(start + 1.0)
    assert not [n for ep, n in sent if ep == mallory_ep and n > 1000]  # not yet
    relay.tick(start + SNAPSHOT_EVERY + 0.1)
    assert [n for ep, n in sent if ep == mallory_ep and n > 1000]  # now, with no ping in between
