"""The replay window against a plain reference model."""

from hypothesis import given, strategies as st

from tunneld.proto.replay import WINDOW, ReplayWindow


class Model:
    def __init__(self):
        self.seen = set()

    def fresh(self, n):
        top = max(self.seen, default=-1)
        return n not in self.seen and n > top - WINDOW

    def mark(self, n):
        self.seen.add(n)


@given(st.lists(st.integers(min_value=0, max_value=3 * WINDOW), max_size=300))
def test_matches_model(counters):
    w, m = ReplayWindow(), Model()
    for n in counters:
        assert w.fresh(n) == m.fresh(n), n
        if m.fresh(n):
            w.mark(n)
            m.mark(n)


@given(st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=100))
def test_huge_counters(counters):
    w, m = ReplayWindow(), Model()
    for n in counters:
        assert w.fresh(n) == m.fresh(n)
        if m.fresh(n):
            w.mark(n)
            m.mark(n)


def test_in_order_stream_stays_small():
    w = ReplayWindow()
    for n in range(50_000):
        assert w.fresh(n)
        w.mark(n)
        assert not w.fresh(n)
    assert w.bits.bit_length() <= 2 * WINDOW + 1
    assert not w.fresh(50_000 - WINDOW - 1)
    assert w.fresh(50_000)


def test_reordering_within_window():
    w = ReplayWindow()
    w.mark(100)
    assert w.fresh(99) and w.fresh(100 - WINDOW + 1)
    assert not w.fresh(100 - WINDOW)
    w.mark(99)
    assert not w.fresh(99)
