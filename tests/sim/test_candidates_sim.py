"""Where a node sends a peer's traffic: only to a candidate that is a real remote address,
and only once a probe came back from that very address. The peer here is a member (its
token leaked) that names the candidates and answers probes as it likes."""

from tunneld.proto import wire
from tunneld.proto.endpoint import RELAY
from tests.sim.simnet import SimNet

THIRD_PARTY = "198.51.100.77:53"  # someone outside the overlay, to be flooded


def peer_of(net, name, other):
    node = net.nodes[name]
    return next(p for p in node.peers.values() if p.name == other)


def test_a_peer_cannot_point_our_traffic_at_a_third_party():
    """Finding: probe replies were not tied to the endpoint probed. mallory names a third party
    as its LAN candidate; alpha's probes go there, mallory answers them itself (the sequence
    numbers count up from 1) from where it is, and alpha sent its traffic to the third party."""
    net = SimNet()
    net.add_node("alpha", nat="public")
    net.add_node("mallory", lan=(THIRD_PARTY,))
    net.advance(3)
    net.send_ip("alpha", "mallory")
    net.advance(1)
    peer = peer_of(net, "alpha", "mallory")
    third = ("198.51.100.77", 53)
    mallory = net.nodes["mallory"]
    ours = peer_of(net, "mallory", "alpha")
    for _ in range(20):  # 10 s: answer every probe alpha might have sent to the third party
        for seq in range(1, 60):
            reply = ours.keys.current.seal(bytes((wire.PROBE_REPLY,)) + seq.to_bytes(8, "big"), ours.prefix(RELAY))
            net.queue.append(("relay", reply, net.ios["mallory"].endpoint))
        net.advance(0.5)
    assert peer.tx_ep != third and third not in peer.path.rtt
    assert net.nodes["alpha"].drops["probe_wrong_path"] > 0
    assert mallory is net.nodes["mallory"]


def test_loopback_link_local_and_multicast_candidates_are_never_probed():
    net = SimNet()
    bad = ("127.0.0.1:22", "169.254.169.254:80", "224.0.0.251:5353", "0.0.0.0:1", "255.255.255.255:9")
    net.add_node("alpha", nat="public")
    net.add_node("mallory", lan=bad)
    net.advance(3)
    net.send_ip("alpha", "mallory")
    net.advance(5)
    contacted = {f"{h}:{p}" for h, p in net.ios["alpha"].contacted}
    assert not contacted & set(bad)
    assert not [e for e in peer_of(net, "alpha", "mallory").candidates() if f"{e[0]}:{e[1]}" in bad]
