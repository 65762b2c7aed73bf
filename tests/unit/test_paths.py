"""Path selection as a pure state machine, driven by an injected clock."""

from tunneld.control import paths
from tunneld.control.paths import PathState

A = ("203.0.113.11", 4000)
B = ("198.19.1.2", 4000)
C = ("198.51.100.7", 5000)


def test_starts_relayed_and_punches_fast_then_slow():
    p = PathState()
    p.set_candidates([A], 0.0)
    assert p.direct(0.0) is None
    sent = [t for t in range(0, 60) if p.due(float(t))]
    assert sent[: paths.FAST_TRIES] == list(range(paths.FAST_TRIES))  # once a second while punching
    later = sent[paths.FAST_TRIES:]
    assert all(b - a >= paths.SLOW_INTERVAL for a, b in zip(later, later[1:]))


def test_a_reply_makes_the_path_direct_and_silence_undoes_it():
    p = PathState()
    p.set_candidates([A], 0.0)
    assert p.due(0.0) == [A]
    assert p.replied(A, 0.002, 0.1)
    assert p.direct(0.1) == A
    assert p.direct(0.1 + paths.DIRECT_TIMEOUT - 0.01) == A
    assert p.direct(0.1 + paths.DIRECT_TIMEOUT) is None  # back to the relay within seconds


def test_a_direct_path_is_kept_alive_by_probes_on_it():
    p = PathState()
    p.set_candidates([A, B], 0.0)
    p.due(0.0)
    p.replied(A, 0.002, 0.05)
    now = 0.05
    for _ in range(40):  # 40 keepalive rounds, each answered
        now += paths.KEEPALIVE
        assert p.due(now) == [A]
        p.replied(A, 0.002, now + 0.01)
        assert p.direct(now + 0.01) == A


def test_an_authenticated_packet_from_anywhere_is_a_candidate_probed_at_once():
    p = PathState()
    p.set_candidates([A], 0.0)
    for t in range(30):
        p.due(float(t))  # long past the fast tries
    p.heard(C, 30.5)  # a symmetric NAT's fresh mapping: found by its packet
    assert C in p.candidates and p.direct(30.5) is None
    assert C in p.due(30.5)  # probed now, not in 15 s
    assert p.replied(C, 0.003, 30.6) and p.direct(30.6) == C


def test_hearing_without_answers_is_no_path():
    """One-way reachability (our packets to it are lost) must not look like a working path."""
    p = PathState()
    p.set_candidates([A], 0.0)
    p.replied(A, 0.002, 0.0)
    for t in range(1, 20):
        p.heard(A, float(t))  # it keeps sending to us; none of our probes come back
        p.due(float(t))
    assert p.direct(19.0) is None


def test_a_path_that_heals_is_found_again():
    p = PathState()
    p.set_candidates([A], 0.0)
    p.replied(A, 0.002, 0.0)
    t = paths.DIRECT_TIMEOUT + 1
    assert p.direct(t) is None
    probes = [x for x in range(int(t), int(t) + 60) if p.due(float(x))]
    assert probes  # still probing while relayed
    p.replied(A, 0.002, probes[-1] + 0.01)
    assert p.direct(probes[-1] + 0.01) == A


def test_the_faster_endpoint_wins():
    p = PathState()
    p.set_candidates([A, B], 0.0)
    p.replied(A, 0.010, 0.1)
    assert not p.replied(B, 0.009, 0.1)  # not clearly faster: keep A
    assert p.replied(B, 0.001, 0.2)  # a LAN path, ten times faster
    assert p.direct(0.2) == B


def test_new_candidates_punch_again_fast():
    p = PathState()
    p.set_candidates([A], 0.0)
    for t in range(100):
        p.due(float(t))
    assert p.fast_left == 0
    p.set_candidates([A, B], 100.0)
    assert p.due(100.0) == [A, B] and p.fast_left == paths.FAST_TRIES - 1
    p.set_candidates([A, B], 101.0)  # the same again changes nothing
    assert p.due(100.5) == []


def test_hearing_again_from_a_path_that_had_gone_quiet_reports_the_change():
    p = PathState()
    p.set_candidates([A], 0.0)
    assert p.replied(A, 0.002, 0.0)
    assert p.direct(paths.DIRECT_TIMEOUT + 1) is None
    assert p.replied(A, 0.002, paths.DIRECT_TIMEOUT + 1)  # the same endpoint, usable again: a change
    assert not p.replied(A, 0.002, paths.DIRECT_TIMEOUT + 2)


def test_ipv6_is_preferred_unless_it_is_much_slower():
    six = ("2001:db8:1:1::2", 4000)
    p = PathState()
    p.set_candidates([A, six], 0.0)
    p.replied(A, 0.0010, 0.1)  # IPv4 answers first
    assert p.direct(0.1) == A
    p.replied(six, 0.0015, 0.1)  # IPv6 a little slower: still better (no NAT on the way)
    assert p.direct(0.1) == six
    p.replied(A, 0.0009, 0.2)  # IPv4 a little faster does not take it back
    assert p.direct(0.2) == six
    q = PathState()
    q.set_candidates([A, six], 0.0)
    q.replied(A, 0.001, 0.1)
    q.replied(six, 0.002, 0.1)  # twice as slow: IPv4 stays
    assert q.direct(0.1) == A
