"""Protocol versions and capabilities in the handshakes (proto/version.py): what each side
announces, that a capability is used only when the other side announced it, and that a
side whose range misses ours is told why, in the log and in status, never dropped in
silence. The mixed network of real releases is tests/integration/test_upgrade.py."""

import logging

import pytest

from tunneld.control import directory
from tunneld.engine import joins, peers as peers_mod, relaylink
from tunneld.proto.handshake import TIMESTAMP_LEN, read_initiation
from tunneld.proto.version import LEGACY, OURS, Hello
from tunneld.proto import wire
from tests.sim.simnet import SimNet


def pair(**kw):
    net = SimNet(**kw)
    net.add_node("alpha")
    net.add_node("bravo")
    net.advance(2)
    return net


def peer(net, src, dst):
    return next(p for p in net.nodes[src].peers.values() if p.name == dst)


def status_of(net, src, dst):
    return next(p for p in net.nodes[src].status()["peers"] if p["name"] == dst)


def inits_to(net, name):
    """The peer INITs that reached `name`, with the payload each carried."""
    node = net.nodes[name]
    out = []
    for to, data, _ in net.transcript:
        if to == name and data[:1] == bytes((wire.RELAYED,)) and data[8] == wire.INIT:
            out.append(read_initiation(node.identity, data[8:]).payload)
    return out


def test_new_nodes_announce_themselves_and_use_the_hello_at_once():
    net = pair()
    assert net.relay.status()["nodes"][0]["protocol"] == str(OURS)
    assert peer(net, "alpha", "bravo").announced == OURS  # the relay's directory says so
    net.send_ip("alpha", "bravo")
    net.advance(0.5)
    (payload,) = inits_to(net, "bravo")
    assert len(payload) > TIMESTAMP_LEN  # the INIT carried our hello
    assert peer(net, "bravo", "alpha").said == OURS and peer(net, "alpha", "bravo").said == OURS
    assert status_of(net, "alpha", "bravo")["protocol"] == str(OURS) and status_of(net, "alpha", "bravo")["problem"] is None


def test_under_a_relay_that_announces_nobody_the_first_init_is_plain_and_the_rest_is_learned(monkeypatch):
    # a 0.1.0 relay: directory messages without "hellos"
    real = directory._message
    monkeypatch.setattr(directory, "_message", lambda *a: {k: v for k, v in real(*a).items() if k != "hellos"})
    net = pair()
    assert peer(net, "alpha", "bravo").announced == LEGACY
    net.send_ip("alpha", "bravo")
    net.advance(0.5)
    (payload,) = inits_to(net, "bravo")
    assert len(payload) == TIMESTAMP_LEN  # what a 0.1.0 node takes
    assert peer(net, "alpha", "bravo").said == OURS  # bravo's RESP told alpha what it speaks
    assert peer(net, "bravo", "alpha").said is None  # a plain INIT tells nothing
    net.nodes["alpha"].handshakes.initiate(peer(net, "alpha", "bravo"), net.now)  # a rekey, say
    net.deliver()
    assert len(inits_to(net, "bravo")[-1]) > TIMESTAMP_LEN and peer(net, "bravo", "alpha").said == OURS


def test_a_peer_that_takes_only_plain_inits_is_reached_after_two_tries(monkeypatch):
    """The directory says bravo takes hellos, but bravo drops every INIT longer than a timestamp,
    as a 0.1.0 node does: alpha leaves the hello off after HELLO_ATTEMPTS, and gets through."""
    net = pair()
    bravo = net.nodes["bravo"]
    on_init = bravo.handshakes.on_init

    def like_010(p, msg, now, via):
        if len(read_initiation(bravo.identity, msg).payload) != TIMESTAMP_LEN:
            bravo.drops["handshake_replay"] += 1  # 0.1.0's reason for any other length
            return
        on_init(p, msg, now, via)

    monkeypatch.setattr(bravo.handshakes, "on_init", like_010)
    packet = net.send_ip("alpha", "bravo", b"eventually")
    net.advance(4)
    assert packet in net.ios["bravo"].tun
    lengths = [len(p) for p in inits_to(net, "bravo")]
    assert lengths[:peers_mod.HELLO_ATTEMPTS] == [lengths[0]] * peers_mod.HELLO_ATTEMPTS and lengths[0] > 12
    assert lengths[peers_mod.HELLO_ATTEMPTS] == TIMESTAMP_LEN


def test_a_peer_too_new_is_refused_with_a_reason_in_the_log_and_in_status(monkeypatch, caplog):
    net = pair()
    bravo = net.nodes["bravo"]
    receive = bravo.receive

    def from_the_future(*args):  # bravo answers as a tunneld that speaks only protocol 9
        monkeypatch.setattr(peers_mod, "OURS", Hello(9, 9, frozenset({"hello"})))
        try:
            receive(*args)
        finally:
            monkeypatch.setattr(peers_mod, "OURS", OURS)

    monkeypatch.setattr(bravo, "receive", from_the_future)
    with caplog.at_level(logging.WARNING, "tunneld.node"):
        packet = net.send_ip("alpha", "bravo", b"no common protocol")
        net.advance(3)
    assert packet not in net.ios["bravo"].tun
    st = status_of(net, "alpha", "bravo")
    assert "newer" in st["problem"] and "upgrade this tunneld" in st["problem"] and not st["session"]
    assert net.nodes["alpha"].drops["peer_version"] >= 1
    lines = [r.getMessage() for r in caplog.records if "cannot talk to bravo" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]  # said once, in one line, not per attempt


@pytest.mark.parametrize("side", ["node", "relay"])
def test_a_node_and_a_relay_without_a_common_protocol_say_why_and_keep_trying(monkeypatch, caplog, side):
    net = SimNet()
    if side == "node":  # a node from the future joins today's relay
        monkeypatch.setattr(relaylink, "OURS", Hello(9, 9))
    else:  # today's node meets a relay from the future
        monkeypatch.setattr(joins, "OURS", Hello(9, 9))
    with caplog.at_level(logging.WARNING):
        node = net.add_node("alpha")
        net.advance(20)
    assert node.assignment is None and not net.ios["alpha"].refusals and not node.stopped  # still trying
    problem = node.status()["relay"]["problem"]
    assert "protocol" in problem and "upgrade" in problem
    assert ("upgrade the relay" in problem) == (side == "node")
    assert any(problem in r.getMessage() for r in caplog.records)
