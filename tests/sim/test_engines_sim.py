"""What the engines promise as engines: a run is a function of its seed, the relay answers a
new node only once its registration is stored, and the node's host changes leave as
effects, in order, never as calls made from inside receive()."""

import ipaddress

from tunneld.engine import effects as fx
from tunneld.proto.endpoint import RELAY
from tunneld.store.base import Register, StoreError
from tests.sim.simnet import SimNet


def scenario(seed: int) -> SimNet:
    net = SimNet(seed=seed)
    for name, nat in (("alpha", "public"), ("bravo", "cone"), ("charlie", "blocked")):
        net.add_node(name, nat=nat)
    net.advance(2)
    for src, dst in (("alpha", "bravo"), ("bravo", "charlie"), ("charlie", "alpha")):
        net.send_ip(src, dst, b"seeded")
    net.advance(10)
    return net


def test_a_run_is_reproducible_from_its_seed():
    first, again, other = scenario(5), scenario(5), scenario(6)
    assert len(first.transcript) > 100
    assert first.transcript == again.transcript  # every byte on the wire, in order
    assert [a.address for a in first.ios["charlie"].assignments] == ["100.64.0.3"]
    assert other.transcript != first.transcript  # the seed is what decides: keys, indexes, jitter


def test_a_new_node_hears_that_it_is_in_only_once_its_registration_is_stored():
    net = SimNet()
    net.add_node("alpha")
    net.advance(2)
    net.hold_writes = True  # the store is slow
    bravo = net.add_node("bravo")
    net.advance(3)
    assert bravo.assignment is None and not net.ios["bravo"].assignments
    assert any(isinstance(w, Register) for w in net.held_writes)
    assert "bravo" not in net.store.nodes
    assert net.relay.counts["joins_held"] >= 2  # it asked again: still no answer before the store
    net.release_writes()  # the answer to its newest handshake goes out now
    net.deliver()
    assert bravo.assignment is not None and net.store.nodes["bravo"].public_key == bravo.identity.public
    net.advance(2)  # the directory tells alpha
    packet = net.send_ip("alpha", "bravo", b"stored first")
    net.advance(0.5)
    assert packet in net.ios["bravo"].tun


def test_a_registration_the_store_refuses_is_taken_back_and_the_node_gets_in_later():
    net = SimNet()
    token = net.token()
    net.store.fail = StoreError("disk full")
    bravo = net.add_node("bravo", token=token)
    net.advance(0.25)  # its first handshake: the relay would take it, but the store fails
    assert bravo.assignment is None and net.relay.drops["store_error"] == 1
    assert not net.registry.unwritten and "bravo" not in net.registry.by_name  # nothing half-made
    net.advance(10)
    assert bravo.assignment is not None and bravo.assignment.address == "100.64.0.1"
    assert net.store.nodes["bravo"].address == "100.64.0.1"


def test_a_token_the_store_did_not_take_admits_nobody():
    net = SimNet()
    net.store.fail = StoreError("disk full")
    token = net.token()
    assert token.token_id not in net.registry.tokens and token.token_id not in net.store.tokens
    net.add_node("alpha", token=token)
    net.advance(2)
    assert net.ios["alpha"].refusals[0][0] == "bad_token"


def test_host_changes_leave_as_effects_in_order():
    net = SimNet(auto_approve=("198.18.0.0/15",))
    net.add_node("gw", routes=("198.18.0.0/16",))
    outside = net.add_node("outside", accept_routes=True, protected=("192.0.2.1",))
    seen = []
    for _ in range(20):  # deliver by hand, collecting what the outside node asks of its host
        net.now += 0.25
        net.relay.tick(net.now)
        for node in net.nodes.values():
            node.tick(net.now)
        while net.queue:
            dst, data, src = net.queue.popleft()
            if dst == "relay":
                net.relay.receive(data, src, net.now)
            else:
                net.nodes[net.by_endpoint[dst]].receive(data, RELAY, net.now)
            net.store_writes()
        seen += outside.take_effects()
    kinds = [type(e).__name__ for e in seen]
    assert kinds[:3] == ["SetAddress", "SetRoutes", "SetGateway"] and "SaveState" in kinds
    address = next(e for e in seen if isinstance(e, fx.SetAddress))
    assert address.interface == ipaddress.IPv4Interface("100.64.0.2/10") and address.mtu == 1432
    routes = [e.prefixes for e in seen if isinstance(e, fx.SetRoutes)]
    gw = net.nodes["gw"].assignment.address
    # none at first; then the peer's own address and the gateway's prefix, each once: the
    # overlay's whole range never goes through tunneld0
    assert routes[0] == () and routes[-1] == tuple(sorted(("198.18.0.0/16", f"{gw}/32")))
    assert len(routes) == len(set(routes)) <= 3
    saved = next(e for e in seen if isinstance(e, fx.SaveState))
    assert saved.assignment == outside.assignment and saved.relay_key == net.relay_identity.public


def test_the_relays_own_messages_count_only_from_the_relay():
    """An authentic message of the relay link's session, sent to a node straight from some
    endpoint instead of from the relay (say, captured before it arrived), is dropped: only
    peers' sessions are taken direct, and the link's state does not move."""
    net = SimNet()
    alpha = net.add_node("alpha")
    net.advance(2)
    held = []
    net.tap = lambda dst, data, src: (held.append(data), None)[1] if src == "relay" else data
    alpha.relay.ping(net.now)
    net.deliver()
    net.tap = None
    (pong,) = [d for d in held if d[0] == 3]
    rx, rtt = alpha.relay.last_rx, alpha.relay.rtt
    alpha.receive(pong, ("198.51.100.66", 4000), net.now + 1)
    assert alpha.drops["direct_unknown_session"] == 1
    assert (alpha.relay.last_rx, alpha.relay.rtt) == (rx, rtt)
    alpha.receive(pong, RELAY, net.now + 1)  # the same message from the relay is taken
    assert alpha.relay.last_rx == net.now + 1


def test_a_node_the_relay_timed_out_is_back_online_at_its_next_ping():
    """Finding (a join storm of 3,000 nodes): a node whose pings did not reach the relay for
    20 s was taken offline, and stayed offline when its pings came through again on the same
    session from the same endpoint, until its next rekey, minutes later."""
    net = SimNet()
    for name in ("alpha", "bravo"):
        net.add_node(name)
    net.advance(3)
    net.ios["bravo"].udp_blocked = True  # its pings are lost; what the relay sends still arrives
    for i in range(8):
        net.add_node(f"new{i}")  # directory changes keep reaching bravo
        net.advance(3)
    assert not {n["name"]: n["connected"] for n in net.relay.status()["nodes"]}["bravo"]
    assert net.nodes["bravo"].relay.up  # it heard from the relay all along
    net.ios["bravo"].udp_blocked = False
    net.advance(6)  # its next ping, on the session it has
    assert {n["name"]: n["connected"] for n in net.relay.status()["nodes"]}["bravo"]
