"""Direct paths through the engines: punching, switching both ways, surviving the relay."""

from tunneld.control import paths
from tunneld.proto import session as session_mod
from tunneld.proto import wire
from tests.sim.simnet import SimNet


def pair(nat_a, nat_b):
    net = SimNet()
    net.add_node("a", nat=nat_a)
    net.add_node("b", nat=nat_b)
    net.advance(2)
    return net


def path(net, src, dst):
    return next(p for p in net.nodes[src].status()["peers"] if p["name"] == dst)


def relayed_data(net):
    """RELAYED messages carrying peer DATA that reached the relay."""
    return sum(1 for d in net.delivered_to_relay if d[0] == wire.RELAYED and d[8] == wire.DATA)


def talk(net, seconds, step=0.5):
    got = 0
    for _ in range(int(seconds / step)):
        for src, dst in (("a", "b"), ("b", "a")):
            packet = net.send_ip(src, dst, b"x" * 100)
            got += packet in net.ios[dst].tun
        net.advance(step)
    return got


def test_public_nodes_go_direct_and_the_relay_carries_no_more_data():
    net = pair("public", "public")
    talk(net, 3)
    assert path(net, "a", "b")["path"] == "direct" and path(net, "b", "a")["path"] == "direct"
    assert path(net, "a", "b")["endpoint"] == "%s:%d" % net.ios["b"].endpoint
    before = relayed_data(net)
    talk(net, 10)
    assert relayed_data(net) == before


def test_two_cone_nats_punch_through():
    net = pair("cone", "cone")
    talk(net, 5)
    assert path(net, "a", "b")["path"] == "direct" and path(net, "b", "a")["path"] == "direct"


def test_a_node_nobody_can_reach_stays_relayed_and_works():
    net = pair("cone", "blocked")
    sent = talk(net, 20)
    assert path(net, "a", "b")["path"] == "relay" and path(net, "b", "a")["path"] == "relay"
    assert sent == 2 * 40  # every packet arrived, through the relay


def test_a_broken_direct_path_falls_back_to_the_relay_and_returns():
    net = pair("public", "public")
    talk(net, 3)
    assert path(net, "a", "b")["path"] == "direct"
    net.tap = lambda dst, data, src: None if isinstance(dst, tuple) and dst[0] == "direct" else data
    delivered = talk(net, paths.DIRECT_TIMEOUT + 2)
    assert path(net, "a", "b")["path"] == "relay" and path(net, "b", "a")["path"] == "relay"
    assert delivered >= 2 * int((paths.DIRECT_TIMEOUT + 2) / 0.5) - 2 * 14  # at most the outage's packets lost
    assert talk(net, 3) == 12  # on the relay, nothing lost
    net.tap = None
    talk(net, paths.SLOW_INTERVAL + 2)
    assert path(net, "a", "b")["path"] == "direct"


def test_direct_pairs_outlive_the_relay_rekeys_included():
    net = pair("public", "public")
    talk(net, 3)
    net.relay_up = False
    handshakes = net.nodes["a"].counts["peer_handshakes_sent"] + net.nodes["b"].counts["peer_handshakes_sent"]
    got = talk(net, session_mod.REJECT_AFTER_TIME + 60, step=2.0)
    assert got == 2 * int((session_mod.REJECT_AFTER_TIME + 60) / 2.0)
    assert (net.nodes["a"].counts["peer_handshakes_sent"] + net.nodes["b"].counts["peer_handshakes_sent"]
            > handshakes)  # the session was renewed, over the direct path
