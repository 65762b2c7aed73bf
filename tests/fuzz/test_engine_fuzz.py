"""Hostile input to the engines: real captured messages, mutated, fed to relay and node.

Invariant: receive() never raises, whatever arrives and from wherever; every bad
message is counted in `drops`; and the overlay still carries traffic afterwards.
"""

import functools

from hypothesis import HealthCheck, given, settings, strategies as st

from tunneld.engine.node import RELAY
from tunneld.proto.framing import Deframer, frame
from tests.sim.simnet import SimNet

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.lru_cache(maxsize=1)
def captured():
    """A joined overlay, and every message that crossed it while it came up and carried data."""
    net = SimNet()
    seen = []
    net.tap = lambda dst, data, src: (seen.append(data), data)[1]
    for name in ("alpha", "bravo"):
        net.add_node(name)
    net.advance(2)
    net.send_ip("alpha", "bravo", b"x" * 100)
    net.send_ip("bravo", "alpha", b"y" * 100)
    net.advance(6)
    net.tap = None
    return net, tuple(seen)


def mutate(data: bytes, how: int, pos: int, value: int) -> bytes:
    if not data:
        return bytes([value])
    pos %= len(data)
    if how == 0:  # flip a bit
        b = bytearray(data)
        b[pos] ^= 1 << (value % 8)
        return bytes(b)
    if how == 1:  # truncate
        return data[:pos]
    if how == 2:  # extend
        return data + bytes([value]) * (pos % 64 + 1)
    if how == 3:  # change the type byte
        return bytes([value % 8]) + data[1:]
    return data  # replay as is


mutation = st.tuples(st.integers(0, 10_000), st.integers(0, 4), st.integers(0, 10_000), st.integers(0, 255))


def still_works(net):
    packet = net.send_ip("alpha", "bravo", b"still here")
    net.advance(0.5)
    assert packet in net.ios["bravo"].tun


@SETTINGS
@given(st.lists(mutation, min_size=1, max_size=20), st.booleans())
def test_relay_survives_mutated_messages(mutations, from_member):
    net, seen = captured()
    member_ep = net.ios["alpha"].endpoint
    for index, how, pos, value in mutations:
        data = mutate(seen[index % len(seen)], how, pos, value)
        net.relay.receive(data, member_ep if from_member else ("198.51.100.99", 999), net.now)
    net.queue.clear()
    still_works(net)


@SETTINGS
@given(st.lists(mutation, min_size=1, max_size=20), st.sampled_from(["relay", "direct", "unwrapped"]))
def test_node_survives_mutated_messages(mutations, source):
    """From the relay, or straight from an endpoint (hole-punched UDP) as a stranger would send;
    "unwrapped": a relayed message stripped of its relay header, sent direct."""
    net, seen = captured()
    node = net.nodes["bravo"]
    for index, how, pos, value in mutations:
        data = mutate(seen[index % len(seen)], how, pos, value)
        if source == "relay":
            node.receive(data, RELAY, net.now)
        else:
            if source == "unwrapped" and data[:1] == b"\x04":
                data = data[8:]
            node.receive(data, ("198.51.100.66", 4000 + value), net.now)
    net.queue.clear()
    still_works(net)


@SETTINGS
@given(st.lists(st.binary(max_size=1600), max_size=10))
def test_node_tun_side_takes_anything(packets):
    net, _ = captured()
    for p in packets:
        net.nodes["alpha"].from_tun(p, net.now)
    net.deliver()
    still_works(net)


@SETTINGS
@given(st.lists(mutation, min_size=1, max_size=10), st.integers(1, 7))
def test_tcp_stream_of_mutated_frames_one_byte_at_a_time(mutations, piece):
    """What the relay gets over TCP: the deframer and the engine, fed in small pieces."""
    net, seen = captured()
    stream = b"".join(frame(mutate(seen[i % len(seen)], h, p, v) or b"\x00") for i, h, p, v in mutations)
    deframer = Deframer()
    ep = object()
    from tunneld.proto.errors import ProtocolError
    try:
        for i in range(0, len(stream), piece):
            for msg in deframer.feed(stream[i : i + piece]):
                net.relay.receive(msg, ep, net.now)
    except ProtocolError:
        pass  # the daemon closes such a stream
    net.queue.clear()
    still_works(net)


@SETTINGS
@given(name=st.text(max_size=70), routes=st.lists(st.text(max_size=24), max_size=4),
       lan=st.lists(st.text(max_size=30), max_size=4), mtu=st.integers(0, 65535))
def test_a_member_may_say_anything_in_its_join_request(name, routes, lan, mtu):
    """Authenticated, with a valid token, and hostile: the relay takes the join or refuses it,
    and never fails on what the request says."""
    net = SimNet()
    node = net.add_node(name or "x", routes=tuple(routes), lan=tuple(lan))
    node.underlay_mtu = mtu
    net.advance(1)
    # joined, refused with a reason, or (a request the decoder rejects) dropped and counted
    assert node.assignment is not None or net.ios[name or "x"].refusals or net.relay.drops["join_malformed"]
    assert "internal_error" not in net.relay.drops
