"""Overlay MTU, advertised routes and MSS clamping, through the engines in memory."""


from tests.sim.simnet import SimNet, ipv4_packet
from tests.unit.test_mss import mss_of, syn, tcp_valid


def test_every_node_takes_the_smallest_path_as_overlay_mtu():
    net = SimNet()
    net.add_node("small", underlay_mtu=1450)
    net.add_node("big1")
    net.add_node("big2")
    net.advance(2)
    assert {n: node.mtu.interface for n, node in net.nodes.items()} == {"small": 1382, "big1": 1382, "big2": 1382}
    status = net.nodes["big1"].status()
    assert status["mtu"] == 1382 and status["network_mtu"] == 1382
    paths = {p["name"]: p["mtu"] for p in status["peers"]}
    assert paths == {"small": 1382, "big2": 1432}  # what each path would carry on its own


def test_a_smaller_late_joiner_lowers_running_nodes_but_nothing_ever_raises_them():
    net = SimNet()
    big = net.add_node("big")
    net.advance(2)
    assert big.mtu.interface == 1432 and net.ios["big"].mtus == []
    net.add_node("small", underlay_mtu=1400)
    net.advance(2)
    assert big.mtu.interface == 1332 and net.ios["big"].mtus == [1332]
    net.relay.revoke("small")
    net.advance(2)
    assert big.mtu.interface == 1332  # stays down while running: pods may already use it


def test_the_first_join_may_raise_a_cached_mtu():
    net = SimNet()
    node = net.add_node("a", mtu=1300)  # e.g. cached from a time with a smaller member
    net.advance(2)
    assert node.mtu.interface == 1432 and net.ios["a"].mtus == [1432]


def test_mtu_survives_a_relay_restart_from_the_store():
    net = SimNet()
    net.add_node("small", underlay_mtu=1450)
    net.add_node("big")
    net.advance(2)
    net.restart_relay()
    assert net.relay.directory.mtu == 1382
    net.advance(8)
    assert net.nodes["big"].mtu.interface == 1382


def gateway_net(**accept):
    net = SimNet()
    gw = net.add_node("gw", routes=("198.18.0.0/16",))
    outside = net.add_node("outside", accept_routes=True, protected=("192.0.2.1",))
    plain = net.add_node("plain")
    net.advance(2)
    net.relay.approve_route("gw", "198.18.0.0/16")  # as `tunneld routes approve gw 198.18.0.0/16`
    net.store_writes()
    net.advance(1)
    return net, gw, outside, plain


def test_advertised_routes_reach_through_the_gateway():
    net, gw, outside, plain = gateway_net()
    assert net.ios["outside"].routes == ["198.18.0.0/16"]
    assert net.ios["plain"].routes == []
    to_pod = ipv4_packet(outside.assignment.address, "198.18.3.2", b"to a pod")
    outside.from_tun(to_pod, net.now)
    net.advance(0.5)
    assert to_pod in net.ios["gw"].tun
    reply = ipv4_packet("198.18.3.2", outside.assignment.address, b"from the pod")
    gw.from_tun(reply, net.now)
    net.advance(0.5)
    assert reply in net.ios["outside"].tun
    # A node that does not accept the gateway's routes takes no traffic from those sources.
    spoof = ipv4_packet("198.18.3.2", plain.assignment.address, b"from the pod")
    gw.from_tun(spoof, net.now)
    net.advance(0.5)
    assert spoof not in net.ios["plain"].tun and plain.drops["spoofed_source"] >= 1


def test_a_route_over_the_relay_is_never_accepted():
    net = SimNet(auto_approve=("0.0.0.0/0",))  # whatever the relay lets through
    net.add_node("gw", routes=("192.0.2.0/24", "198.18.0.0/16"))
    outside = net.add_node("outside", accept_routes=True, protected=("192.0.2.1",))
    net.advance(2)
    assert net.ios["outside"].routes == ["198.18.0.0/16"]
    assert outside.drops["route_refused"] >= 1


def test_routes_go_when_the_gateway_goes():
    net, gw, outside, _ = gateway_net()
    gw.bye()
    del net.nodes["gw"]  # its process ends with the goodbye (one that speaks again is back online)
    net.advance(1)
    assert net.ios["outside"].routes == []


def test_bad_routes_are_refused_by_the_relay():
    for route, words in (("100.64.0.0/16", "overlaps the overlay"), ("0.0.0.0/0", "default route"),
                         ("198.18.0.1/16", "not a prefix like")):
        net = SimNet()
        net.add_node("gw", routes=(route,))
        net.advance(2)
        (code, message), = net.ios["gw"].refusals
        assert code == "bad_route" and words in message


def test_a_forwarded_syn_is_clamped_to_the_path():
    net = SimNet()
    a = net.add_node("a")
    net.add_node("b", underlay_mtu=1400)
    net.advance(2)
    b_addr = net.nodes["b"].assignment.address
    packet = syn(1460, src=a.assignment.address, dst=b_addr)
    a.from_tun(packet, net.now)
    net.advance(0.5)
    (arrived,) = [p for p in net.ios["b"].tun if p[9] == 6]
    assert mss_of(arrived) == 1332 - 40 and tcp_valid(arrived)
