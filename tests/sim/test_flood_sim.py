"""A flood of handshake initiations at the relay: cookies, per-source limits, no starvation."""

from tunneld.engine.peers import PEER_UNDER_LOAD_INITS
from tunneld.engine.relay import SOURCE_BURST, SOURCE_RATE, UNDER_LOAD_INITS
from tunneld.proto import messages, wire
from tunneld.proto.cookie import CookieJar
from tunneld.proto.handshake import Identity, Initiation, tai64n
from tests.sim.simnet import SimNet


def flood_inits(relay_public, count):
    """Well-formed INITs from unknown keys, valid mac1 and a plausible join request."""
    out = []
    for i in range(count):
        payload = messages.encode({"ts": tai64n(1_700_000_000 * 10**9 + i), "name": f"x{i}", "token": bytes(32), "mtu": 1500,
                                   "routes": [], "lan": []})
        out.append(Initiation(Identity.generate(), relay_public, wire.SUITE_AESGCM, i.to_bytes(4, "big"),
                              payload, 0.0).message)
    return out


def test_a_flood_from_spoofed_sources_gets_cookies_not_handshakes():
    net = SimNet()
    for name in ("alpha", "bravo"):
        net.add_node(name)
    net.advance(2)
    flood = flood_inits(net.relay_identity.public, 600)
    relay = net.relay
    before = relay.counts["initiations_processed"]
    for i, msg in enumerate(flood):  # 600 in one instant, each from another address
        relay.receive(msg, (f"198.51.100.{i % 250}", 1024 + i), net.now)
    net.queue.clear()  # the cookie replies go to addresses that never asked
    processed = relay.counts["initiations_processed"] - before
    assert processed <= UNDER_LOAD_INITS
    assert relay.drops["handshake_needs_cookie"] == 600 - processed
    assert relay.counts["cookie_replies"] == 600 - processed
    # Meanwhile a node joins: it is asked for a cookie, answers it, and is in.
    relay.receive(flood[0], ("198.51.100.1", 999), net.now)  # still under load at this instant
    late = net.add_node("charlie")
    net.now += 0.01
    late.tick(net.now)
    net.deliver()
    assert late.counts["cookies"] == 1 and late.assignment is not None
    # Established nodes never noticed.
    net.advance(1)
    for src, dst in (("alpha", "bravo"), ("bravo", "charlie")):
        packet = net.send_ip(src, dst, b"through the flood")
        net.advance(0.25)
        assert packet in net.ios[dst].tun


def test_a_source_that_answers_cookies_gets_its_share_and_no_more():
    net = SimNet()
    net.add_node("alpha")
    net.advance(2)
    relay = net.relay
    flood = flood_inits(net.relay_identity.public, int(SOURCE_BURST) + 300)
    attacker = ("198.51.100.66", 5555)
    jar = CookieJar(net.relay_identity.public)
    for msg in flood[:UNDER_LOAD_INITS + 1]:  # bring the relay under load
        relay.receive(msg, attacker, net.now)
    cookie = [data for ep, data, _ in net.queue if ep == attacker and data[0] == wire.COOKIE][-1]
    net.queue.clear()
    assert jar.take(cookie, flood[UNDER_LOAD_INITS], net.now)
    before = relay.counts["initiations_processed"]
    for msg in flood:  # all at once, all with a valid mac2
        relay.receive(jar.stamp(msg, net.now), attacker, net.now)
    net.queue.clear()
    assert relay.counts["initiations_processed"] - before == SOURCE_BURST
    assert relay.drops["handshake_rate_limited"] == len(flood) - SOURCE_BURST
    # One second later the source has earned SOURCE_RATE more, and no more.
    net.now += 1.0
    before = relay.counts["initiations_processed"]
    for msg in flood[:300]:
        relay.receive(jar.stamp(msg, net.now), attacker, net.now)
    net.queue.clear()
    assert relay.counts["initiations_processed"] - before == SOURCE_RATE


def test_without_load_nobody_is_asked_for_a_cookie():
    net = SimNet()
    for name in ("alpha", "bravo", "charlie"):
        net.add_node(name)
    net.advance(200)  # joins and a rekey
    assert net.relay.counts["cookie_replies"] == 0
    assert all(n.counts["cookies"] == 0 for n in net.nodes.values())
    assert all(n.counts["relay_handshakes_sent"] >= 2 for n in net.nodes.values())


def test_sources_are_addresses_for_limits_and_address_and_port_for_cookies():
    from tunneld.proto.endpoint import source

    class Stream:  # what the daemon's TCP stream carries
        host, label = "198.51.100.7", "tcp:198.51.100.7:40001"

    assert source(("203.0.113.9", 4000)) == ("203.0.113.9", b"203.0.113.9:4000")
    assert source(("2001:db8::9", 4000)) == ("2001:db8::9", b"[2001:db8::9]:4000")
    assert source(Stream()) == ("198.51.100.7", b"tcp:198.51.100.7:40001")


def test_a_node_flooded_with_initiations_answers_cookies_and_its_peers_still_rekey():
    """A node with a public endpoint, flooded by strangers who learnt its key; its real peer
    rekeys (through the relay, as blocked NATs do here) in the middle of it."""
    net = SimNet()
    alpha, bravo = net.add_node("alpha"), net.add_node("bravo")
    net.advance(2)
    net.send_ip("alpha", "bravo")
    net.advance(1)
    flood = flood_inits(bravo.identity.public, 300)
    before = bravo.counts["peer_initiations_processed"]
    for i, msg in enumerate(flood):
        bravo.receive(msg, (f"198.51.100.{i % 250}", 2000 + i), net.now)
    net.queue.clear()
    processed = bravo.counts["peer_initiations_processed"] - before
    assert processed <= PEER_UNDER_LOAD_INITS
    assert bravo.drops["handshake_needs_cookie"] == 300 - processed
    # alpha starts a new handshake while bravo is under load: a cookie, then the session.
    peer = next(iter(alpha.peers.values()))
    old = peer.keys.current
    alpha.handshakes.initiate(peer, net.now)
    net.deliver()
    assert alpha.counts["cookies"] == 1 and peer.keys.current is not old and peer.keys.current is not None
    packet = net.send_ip("alpha", "bravo", b"after the flood's cookie")
    net.advance(0.25)
    assert packet in net.ios["bravo"].tun
