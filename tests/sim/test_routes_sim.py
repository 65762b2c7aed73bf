"""Advertised routes take effect only once the operator approved them on the relay, and a
node refuses, whatever the relay says, prefixes that are never anyone's to route."""

import pytest

from tunneld.control.approvals import ApprovalError
from tests.sim.simnet import SimNet


def routes_of(net, name):
    return net.ios[name].routes


def settle(net, seconds=1.0):
    net.store_writes()
    net.advance(seconds)


def test_a_member_cannot_take_over_routes_without_an_approval():
    """Finding: a member advertised a more-specific prefix inside a gateway's, the metadata
    address and 0.0.0.0/2; an accepting node installed all three and sent their traffic to
    it. Now only what the operator approved reaches the nodes."""
    net = SimNet()
    net.add_node("gw", routes=("198.18.0.0/16",))
    net.add_node("mallory", routes=("198.18.7.0/24", "169.254.169.254/32", "0.0.0.0/2"))
    net.add_node("outside", accept_routes=True, protected=("192.0.2.1",))
    net.advance(3)
    assert routes_of(net, "outside") == []  # nothing approved yet
    net.relay.approve_route("gw", "198.18.0.0/16")
    settle(net)
    assert routes_of(net, "outside") == ["198.18.0.0/16"]
    with pytest.raises(ApprovalError, match="approved for gw"):
        net.relay.approve_route("mallory", "198.18.7.0/24")  # inside gw's: refused
    assert routes_of(net, "outside") == ["198.18.0.0/16"]
    rows = {r["name"]: r for r in net.relay.route_rows()}
    assert rows["mallory"]["advertised"] == ["0.0.0.0/2", "169.254.169.254/32", "198.18.7.0/24"]
    assert rows["mallory"]["effective"] == [] and rows["gw"]["effective"] == ["198.18.0.0/16"]
    assert net.relay.unapprove_route("gw", "198.18.0.0/16")
    settle(net)
    assert routes_of(net, "outside") == []


def test_approvals_refuse_what_would_capture_the_relay_or_the_overlay_or_unknown_names():
    net = SimNet()
    net.add_node("gw", routes=("192.0.2.0/24",))
    net.advance(2)
    for name, prefix, words in (("gw", "192.0.2.0/24", "relay's address"), ("gw", "100.64.0.0/12", "overlay"),
                                ("gw", "0.0.0.0/0", "default route"), ("ghost", "198.18.0.0/16", "no node named"),
                                ("gw", "198.18.0.1/16", "not a prefix like")):
        with pytest.raises(ApprovalError, match=words):
            net.relay.approve_route(name, prefix)
    assert net.relay.writes == type(net.relay.writes)()  # nothing to store


def test_a_node_refuses_what_no_relay_may_route_for_it_even_if_approved():
    """auto-approve 0.0.0.0/0: the relay lets everything through; the node still refuses
    link-local (the metadata address), loopback, multicast, 0.0.0.0/8, and its own networks."""
    net = SimNet(auto_approve=("0.0.0.0/0",))
    net.add_node("mallory", routes=("169.254.169.254/32", "127.0.0.0/8", "224.0.0.0/4", "0.0.0.0/8",
                                    "10.1.0.0/16", "198.18.0.0/16"))
    outside = net.add_node("outside", accept_routes=True, protected=("192.0.2.1", "10.1.2.0/24"))
    net.advance(3)
    assert routes_of(net, "outside") == ["198.18.0.0/16"]
    assert outside.drops["route_refused"] >= 5


def test_auto_approval_stays_clear_of_explicit_approvals():
    net = SimNet(auto_approve=("198.18.0.0/15",))
    net.add_node("gw", routes=("198.18.0.0/16",))
    net.add_node("other", routes=("198.19.0.0/16", "198.18.4.0/24"))
    net.add_node("outside", accept_routes=True, protected=("192.0.2.1",))
    net.advance(3)
    assert routes_of(net, "outside") == ["198.18.0.0/16", "198.18.4.0/24", "198.19.0.0/16"]
    net.relay.approve_route("gw", "198.18.0.0/16")  # explicit: the other's overlap stops
    settle(net)
    assert routes_of(net, "outside") == ["198.18.0.0/16", "198.19.0.0/16"]


def test_ipv6_prefixes_are_approved_routed_and_source_checked_like_ipv4_ones():
    from tests.sim.simnet import ipv6_packet
    net = SimNet(auto_approve=("2001:db8:70::/48",))
    net.add_node("gw", routes=("2001:db8:70::/64", "198.18.0.0/16"))
    net.add_node("mallory", routes=("2001:db8:71::/64",))  # not approved: it goes nowhere
    outside = net.add_node("outside", accept_routes=True, protected=("192.0.2.1", "2001:db8:0:2::/64"))
    net.advance(3)
    assert routes_of(net, "outside") == ["2001:db8:70::/64"]  # IPv4's 198.18.0.0/16: not approved
    assert outside.status()["accepted_routes"] == ["2001:db8:70::/64"]
    me = outside.status()["address6"]
    # outside -> a host behind gw, through gw
    net.nodes["outside"].from_tun(ipv6_packet(me, "2001:db8:70::5", b"to the lan"), net.now)
    net.advance(1)
    assert any(p.endswith(b"to the lan") for p in net.ios["gw"].tun)
    # gw speaks for its prefix, and for no other
    gw = net.nodes["gw"]
    before = outside.drops["spoofed_source"]
    gw.from_tun(ipv6_packet("2001:db8:70::5", me, b"from the lan"), net.now)
    gw.from_tun(ipv6_packet("2001:db8:71::5", me, b"forged"), net.now)
    net.advance(1)
    got = [p for p in net.ios["outside"].tun if p.endswith((b"from the lan", b"forged"))]
    assert [p[-12:] for p in got] == [b"from the lan"] and outside.drops["spoofed_source"] == before + 1


def test_ipv6_prefixes_that_would_capture_the_hosts_or_the_overlays_are_refused():
    """The node refuses one over its own network whatever the relay approved; the relay
    refuses one inside the overlay's IPv6 prefix, and link-local ones, at the join."""
    net = SimNet(auto_approve=("::/0",))
    net.add_node("mallory", routes=("2001:db8:0:2::/64", "2001:db8:99::/64"))
    outside = net.add_node("outside", accept_routes=True, protected=("192.0.2.1", "2001:db8:0:2::/64"))
    for name, prefix in (("inside", "2001:db8:64::/96"), ("local", "fe80::/64")):
        net.add_node(name, routes=(prefix,))
    net.advance(3)
    assert routes_of(net, "outside") == ["2001:db8:99::/64"]
    assert outside.drops["route_refused"] >= 1
    assert [code for code, _ in net.ios["inside"].refusals + net.ios["local"].refusals] == ["bad_route"] * 2
