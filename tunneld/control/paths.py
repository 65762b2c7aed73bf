"""Which path to a peer: direct UDP when it works, the relay otherwise. Pure; time is an argument.

Candidates are endpoints the peer might be reached at: the address the relay sees
it at (its NAT's mapping), its LAN addresses, and any address an authenticated
packet from it came from ("peer-reflexive": how a node behind a symmetric NAT is
found). Probing them from the same socket that talks to the relay is what punches
the holes: both sides send at once, each NAT then lets the other's packets in.

    relayed ──(a probe to a candidate is answered)─────────────────> direct
    direct  ──(no probe answered on it for DIRECT_TIMEOUT)──────────> relayed
    Only a round trip proves a path: hearing from an endpoint proves nothing about our
    packets reaching it. What we hear from a new endpoint makes it a candidate, probed at once.
    relayed: probe every candidate FAST_INTERVAL apart FAST_TRIES times (punching),
             then every SLOW_INTERVAL, so that a path that heals is found again
    direct:  probe the chosen endpoint every KEEPALIVE (liveness, NAT mappings)
    Of two endpoints that answer, the faster is chosen, an IPv6 one's round trip counting
    half (no NAT on the way): IPv6 wins unless it is over 1.6 times slower.

The caller sends the probes due() names and reports what it hears; direct() says
where data goes now (None: the relay).
"""

from __future__ import annotations

FAST_INTERVAL = 1.0
FAST_TRIES = 10
SLOW_INTERVAL = 15.0
KEEPALIVE = 2.5
DIRECT_TIMEOUT = 6.0
MAX_CANDIDATES = 12
IPV6_WEIGHT = 0.5  # an IPv6 path's round trip counts this much against an IPv4 one's


def _weight(endpoint) -> float:
    return IPV6_WEIGHT if endpoint is not None and ":" in endpoint[0] else 1.0


class PathState:
    __slots__ = ("candidates", "answered_at", "rtt", "chosen", "next_probe", "fast_left")

    def __init__(self):
        self.candidates: list[tuple] = []
        self.answered_at: dict[tuple, float] = {}  # when a probe to each endpoint last came back
        self.rtt: dict[tuple, float] = {}
        self.chosen: tuple | None = None
        self.next_probe = 0.0
        self.fast_left = FAST_TRIES

    def set_candidates(self, endpoints: list[tuple], now: float) -> None:
        """New candidates from the relay's directory: punch again, quickly."""
        merged = list(dict.fromkeys([*endpoints, *(e for e in self.candidates if e in self.answered_at)]))
        merged = merged[:MAX_CANDIDATES]
        if merged != self.candidates:
            fresh = set(merged) - set(self.candidates)
            self.candidates = merged
            if fresh:
                self.fast_left = FAST_TRIES
                self.next_probe = now

    def heard(self, endpoint: tuple, now: float) -> None:
        """An authenticated packet came from endpoint: a candidate (peer-reflexive), probed now."""
        if endpoint not in self.candidates:
            self.candidates = [endpoint, *self.candidates][:MAX_CANDIDATES]
            if self.direct(now) is None:
                self.next_probe = now

    def replied(self, endpoint: tuple, rtt: float, now: float) -> bool:
        """A probe to endpoint came back. True if where data should go changed."""
        before = self.direct(now)
        if endpoint not in self.candidates:
            self.candidates = [endpoint, *self.candidates][:MAX_CANDIDATES]
        self.rtt[endpoint] = rtt
        self.answered_at[endpoint] = now
        if before is None or self._better(endpoint):
            self.chosen = endpoint
        after = self.direct(now)
        if after != before:
            self.next_probe = now + KEEPALIVE
        return after != before

    def _better(self, endpoint: tuple) -> bool:
        # Prefer the faster of two working endpoints (a LAN address over the NAT's, say), and
        # IPv6 over IPv4 unless it is much slower: no NAT on the way, no mapping to expire.
        current = self.rtt.get(self.chosen)
        new = self.rtt.get(endpoint)
        if current is None or new is None:
            return False
        return new * _weight(endpoint) < current * _weight(self.chosen) * 0.8

    def direct(self, now: float) -> tuple | None:
        ep = self.chosen
        if ep is not None and now - self.answered_at.get(ep, -1e9) < DIRECT_TIMEOUT:
            return ep
        return None

    def due(self, now: float) -> list[tuple]:
        """The endpoints to probe now (empty most of the time)."""
        if now < self.next_probe:
            return []
        direct = self.direct(now)
        if direct is not None:
            self.next_probe = now + KEEPALIVE
            return [direct]
        if self.fast_left > 0:
            self.fast_left -= 1
            self.next_probe = now + FAST_INTERVAL
        else:
            self.next_probe = now + SLOW_INTERVAL
        return list(self.candidates)
