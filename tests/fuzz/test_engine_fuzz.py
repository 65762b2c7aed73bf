"""Hostile input to the engines: real captured messages, replayed or mutated, fed to the
relay and to a node, from members, from the relay's address and from strangers.

Invariants, checked message by message:
  - receive() returns normally (an exception would fail the test here; the daemon
    would count it as an internal error);
  - nothing reaches any node's TUN device: a replayed or altered message carries
    nothing a node takes;
  - each message is dropped and counted by reason, by the engine that got it or by the
    node the relay passed it on to. The one exception is a well-formed hint (8 bytes)
    from the relay's address, which is unauthenticated by design and may only prompt a
    rate-limited new handshake: it is counted as a hint;
  - afterwards the overlay still carries traffic.

Every example gets a network of its own. SimNet is reproducible from its seed, so a
fresh one with the captured network's seed is that network again, and the captured
messages are real messages of its sessions.
"""

import dataclasses
import functools

from hypothesis import HealthCheck, given, settings, strategies as st

from tunneld.proto import wire
from tunneld.proto.endpoint import RELAY
from tunneld.proto.errors import ProtocolError
from tunneld.proto.framing import Deframer, frame
from tests.sim.simnet import SimNet

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEED = 11


def overlay() -> SimNet:
    """Two nodes joined to a relay, having carried data both ways: the same bytes every time."""
    net = SimNet(seed=SEED)
    for name in ("alpha", "bravo"):
        net.add_node(name)
    net.advance(2)
    net.send_ip("alpha", "bravo", b"x" * 100)
    net.send_ip("bravo", "alpha", b"y" * 100)
    net.advance(6)
    return net


@functools.lru_cache(maxsize=1)
def captured() -> tuple[bytes, ...]:
    """Every message that crossed overlay() while it came up and carried data."""
    return tuple(data for _, data, _ in overlay().transcript)


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


def drops(net: SimNet) -> int:
    return sum(net.relay.drops.values()) + sum(sum(n.drops.values()) for n in net.nodes.values())


def hints(net: SimNet) -> int:
    return sum(n.counts["hints"] for n in net.nodes.values())


def tun_writes(net: SimNet) -> int:
    return sum(len(io.tun) for io in net.ios.values())


def feed(net: SimNet, deliver, data: bytes, may_be_a_hint: bool = False) -> None:
    """One hostile message: delivered, its consequences carried through the network, and held
    to the invariants above."""
    before, hinted, written = drops(net), hints(net), tun_writes(net)
    deliver(data)
    net.deliver()
    assert tun_writes(net) == written, f"a hostile message reached a TUN device: {data[:24].hex()}"
    is_hint = may_be_a_hint and len(data) == wire.HINT_LEN and data[0] == wire.HINT
    assert drops(net) > before or (is_hint and hints(net) > hinted), \
        f"a hostile message was neither dropped nor counted: {data[:24].hex()}"


def still_works(net):
    net.queue.clear()
    packet = net.send_ip("alpha", "bravo", b"still here")
    net.advance(0.5)
    assert packet in net.ios["bravo"].tun


@SETTINGS
@given(st.lists(mutation, min_size=1, max_size=12), st.booleans())
def test_relay_drops_and_counts_every_replayed_or_mutated_message(mutations, from_member):
    net, seen = overlay(), captured()
    ep = net.ios["alpha"].endpoint if from_member else ("198.51.100.99", 999)
    for index, how, pos, value in mutations:
        feed(net, lambda d: net.relay.receive(d, ep, net.now), mutate(seen[index % len(seen)], how, pos, value))
    still_works(net)


@SETTINGS
@given(st.lists(mutation, min_size=1, max_size=12), st.sampled_from(["relay", "direct", "unwrapped"]))
def test_node_drops_and_counts_every_replayed_or_mutated_message(mutations, source):
    """From the relay's address, or straight from an endpoint (hole-punched UDP) as a stranger
    would send; "unwrapped": a relayed message stripped of its relay header, sent direct."""
    net, seen = overlay(), captured()
    node = net.nodes["bravo"]
    for index, how, pos, value in mutations:
        data = mutate(seen[index % len(seen)], how, pos, value)
        if source == "relay":
            feed(net, lambda d: node.receive(d, RELAY, net.now), data, may_be_a_hint=True)
        else:
            if source == "unwrapped" and data[:1] == bytes((wire.RELAYED,)):
                data = data[wire.RELAYED_HEADER_LEN:]
            feed(net, lambda d: node.receive(d, ("198.51.100.66", 4000 + value), net.now), data)
    still_works(net)


@SETTINGS
@given(st.lists(st.binary(max_size=1600), max_size=10))
def test_node_tun_side_takes_anything(packets):
    net = overlay()
    for p in packets:
        net.nodes["alpha"].from_tun(p, net.now)
    net.deliver()
    still_works(net)


@SETTINGS
@given(st.lists(mutation, min_size=1, max_size=10), st.integers(1, 7))
def test_tcp_stream_of_mutated_frames_one_byte_at_a_time(mutations, piece):
    """What the relay gets over TCP: the deframer and the engine, fed in small pieces."""
    net, seen = overlay(), captured()
    stream = b"".join(frame(mutate(seen[i % len(seen)], h, p, v) or b"\x00") for i, h, p, v in mutations)
    deframer = Deframer()
    ep = object()
    try:
        for i in range(0, len(stream), piece):
            for msg in deframer.feed(stream[i : i + piece]):
                feed(net, lambda d: net.relay.receive(d, ep, net.now), msg)
    except ProtocolError:
        pass  # the daemon closes such a stream
    still_works(net)


@SETTINGS
@given(name=st.text(max_size=70), routes=st.lists(st.text(max_size=24), max_size=4),
       lan=st.lists(st.text(max_size=30), max_size=4), mtu=st.integers(0, 65535))
def test_a_member_may_say_anything_in_its_join_request(name, routes, lan, mtu):
    """Authenticated, with a valid token, and hostile: the relay takes the join or refuses it,
    and never fails on what the request says."""
    net = SimNet()
    node = net.add_node(name or "x", routes=tuple(routes), lan=tuple(lan))
    node.relay.request = dataclasses.replace(node.relay.request, underlay_mtu=mtu)
    net.advance(1)
    # joined, refused with a reason, or (a request the decoder rejects) dropped and counted
    assert node.assignment is not None or net.ios[name or "x"].refusals or net.relay.drops["join_malformed"]
