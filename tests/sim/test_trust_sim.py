"""Which keys a node takes from the relay: without the lock it remembers them and says so
loudly when one changes; under the lock it takes only keys the lock endorses, whatever the
relay says. The relay here is compromised: it rewrites its directory."""

import os

from tunneld.proto import lock
from tunneld.proto.handshake import Identity
from tunneld.proto.token import Endorsement, JoinToken
from tests.sim.simnet import SimNet

LOCK_SEED = bytes(range(32))
LOCK_PUBLIC = lock.public_of(LOCK_SEED)


def endorsed(token: JoinToken) -> JoinToken:
    enroll = os.urandom(32)
    public, sig1 = lock.endorse(LOCK_SEED, token.token_id, enroll)
    return JoinToken(token.relay_public, token.token_id, token.secret, Endorsement(public, enroll, sig1))


def add_endorsed(net, name, token):
    identity = Identity.generate()
    e = token.endorsement
    chain = lock.chain(e.lock_public, token.token_id, e.enroll_seed, e.sig1, identity.public, name)
    return net.add_node(name, token=token, identity=identity, chain=chain, lock=e.lock_public)


def swap_keys(net, victim: str, key: bytes):
    """What a compromised relay does: the victim's entry gets another key."""
    d = net.relay.directory
    e = next(e for e in d.entries.values() if e.name == victim)
    d.set(type(e)(**{**e.__dict__, "key": key}))
    net.relay.tick(net.now + 1)
    net.advance(2)


def test_without_the_lock_a_key_change_is_taken_and_said_loudly(caplog):
    net = SimNet()
    alpha = net.add_node("alpha")
    net.add_node("bravo")
    net.advance(3)
    old = net.nodes["bravo"].identity.public
    attacker = Identity.generate().public
    swap_keys(net, "bravo", attacker)
    st = alpha.status()
    (change,) = st["key_changes"]
    assert change["name"] == "bravo" and change["old_key"] == old.hex() and change["new_key"] == attacker.hex()
    assert any("KEY CHANGE" in r.getMessage() and "bravo" in r.getMessage() for r in caplog.records)
    assert alpha.peers_by_key.get(attacker) is not None  # taken: the relay is trusted for keys here


def test_under_the_lock_a_swapped_key_is_refused_whatever_the_relay_says(caplog):
    net = SimNet(lock=LOCK_PUBLIC)
    token = endorsed(net.token())
    alpha = add_endorsed(net, "alpha", token)
    add_endorsed(net, "bravo", token)
    net.advance(3)
    assert alpha.status()["lock"] == lock.format_public(LOCK_PUBLIC)
    packet = net.send_ip("alpha", "bravo", b"endorsed")
    net.advance(0.5)
    assert packet in net.ios["bravo"].tun
    attacker = Identity.generate().public
    swap_keys(net, "bravo", attacker)
    st = alpha.status()
    assert st["unendorsed"] == ["bravo"] and "bravo" not in [p["name"] for p in st["peers"]]
    assert alpha.peers_by_key.get(attacker) is None and alpha.drops["peer_unendorsed"] == 1
    assert any("network lock does not endorse" in r.getMessage() for r in caplog.records)


def test_a_locked_relay_refuses_a_token_that_is_not_endorsed():
    net = SimNet(lock=LOCK_PUBLIC)
    net.add_node("plain")
    net.advance(3)
    assert net.ios["plain"].refusals[0][0] == "not_endorsed"
    token = endorsed(net.token())
    forged = Identity.generate()  # a chain for another key does not help
    e = token.endorsement
    chain = lock.chain(e.lock_public, token.token_id, e.enroll_seed, e.sig1, forged.public, "thief")
    net.add_node("thief", token=token, chain=chain)
    net.advance(3)
    assert net.ios["thief"].refusals[0][0] == "not_endorsed"


def test_the_token_goes_to_the_relay_until_the_first_join_only():
    """Finding: the node resent its token on every relay handshake, forever."""
    from tunneld.store.memory import MemoryStore
    net = SimNet()
    token = net.token()
    node = net.add_node("alpha", token=token)
    seen = []

    def spy(relay):
        real = relay.registry.join
        relay.registry.join = lambda key, name, credential, *a: (seen.append(credential), real(key, name, credential,
                                                                                               *a))[1]
    spy(net.relay)
    net.advance(3)
    assert seen == [token.credential] and node.status()["relay"]["connected"]
    for _ in range(3):  # rekeys and a reconnect: the key is the identity now
        node.relay.up = False
        net.advance(20)
    assert len(seen) > 3 and seen[1:] == [None] * (len(seen) - 1)
    # A relay that lost its state does not know the key: the node joins with its token again.
    net.store = MemoryStore()
    net.store.tokens = {t.token_id: t for t in net.registry.tokens.values()}
    net.restart_relay()
    seen.clear()
    spy(net.relay)
    net.advance(20)
    assert token.credential in seen and node.status()["relay"]["connected"]


def test_revocation_keeps_working_under_the_lock():
    net = SimNet(lock=LOCK_PUBLIC)
    token = endorsed(net.token())
    alpha = add_endorsed(net, "alpha", token)
    add_endorsed(net, "bravo", token)
    net.advance(3)
    assert [p["name"] for p in alpha.status()["peers"]] == ["bravo"]
    assert net.relay.revoke("bravo")
    net.store_writes()
    net.advance(2)
    assert net.ios["bravo"].refusals[0][0] == "key_revoked"
    assert alpha.status()["peers"] == []


def test_locking_a_running_network_as_the_readme_says():
    """Nodes joined with plain tokens; each restarts with an endorsed token (same key and
    address: the relay records its chain); then the relay restarts with the lock."""
    net = SimNet()
    plain = net.token()
    for name in ("alpha", "bravo"):
        net.add_node(name, token=plain)
    net.advance(3)
    before = {n: net.nodes[n].assignment.address for n in ("alpha", "bravo")}
    token = endorsed(net.token())
    for name in ("alpha", "bravo"):  # a restart: same identity, what node.json kept, the endorsed token
        old = net.nodes.pop(name)
        io = net.ios[name]
        del net.by_endpoint[io.endpoint]
        e = token.endorsement
        chain = lock.chain(e.lock_public, token.token_id, e.enroll_seed, e.sig1, old.identity.public, name)
        net.add_node(name, token=token, identity=old.identity, chain=chain, lock=e.lock_public,
                     assignment=old.assignment, known_keys=tuple(old.trust.known.items()))
    net.advance(3)
    assert all(r.lock for r in net.registry.by_name.values())  # the relay holds every chain
    net.lock = LOCK_PUBLIC
    net.restart_relay()
    net.advance(10)
    for name in ("alpha", "bravo"):
        st = net.nodes[name].status()
        assert st["relay"]["connected"] and st["unendorsed"] == [] and st["address"] == before[name]
    packet = net.send_ip("alpha", "bravo", b"locked")
    net.advance(0.5)
    assert packet in net.ios["bravo"].tun
