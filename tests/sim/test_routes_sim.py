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
                                ("gw", "198.18.0.1/16", "not an IPv4 prefix")):
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
