"""A responder's defence against handshake floods, and the parts it is made of:
token buckets per source, and a meter that says when handshakes come too fast.

All pure (time comes in as an argument) and bounded in memory whatever the
senders do: a flood of distinct sources evicts idle buckets, never grows the
table past its limit.
"""

from __future__ import annotations

from typing import Callable

from ..drops import Drop
from ..proto.cookie import CookieChecker


class HandshakeGuard:
    """Counts INITs; under load, an INIT must carry a cookie (mac2, proto/cookie.py), and
    each source (proto/endpoint.py's source()) gets its share. check() names the reason
    to drop one, or is empty."""

    __slots__ = ("load", "cookies", "limiter")

    def __init__(self, responder_public: bytes, now: float, threshold: int, rate: float, burst: float, *,
                 random: Callable[[int], bytes], sources: int = 16384):
        self.load = LoadMeter(threshold)
        self.cookies = CookieChecker(responder_public, now, random)
        self.limiter = SourceLimiter(rate, burst, sources)

    def check(self, msg: bytes, host, source: bytes, now: float) -> str:
        if not self.load.event(now):
            return ""
        if not self.cookies.mac2_valid(msg, source, now):
            return Drop.HANDSHAKE_NEEDS_COOKIE  # answer with cookie_reply(): it costs no public-key work
        if not self.limiter.allow(host, now):
            return Drop.HANDSHAKE_RATE_LIMITED
        return ""

    def cookie_reply(self, msg: bytes, source: bytes, now: float) -> bytes:
        return self.cookies.reply(msg, msg[4:8], source, now)

    def tick(self, now: float) -> None:
        if len(self.limiter) and not self.load.under_load(now):
            self.limiter.prune(now)


class SourceLimiter:
    """At most `rate` events per second per source, with bursts of `burst`."""

    __slots__ = ("rate", "burst", "limit", "_buckets")

    def __init__(self, rate: float, burst: float, limit: int = 16384):
        self.rate = rate
        self.burst = burst
        self.limit = limit
        self._buckets: dict[object, list[float]] = {}  # source -> [tokens, time]

    def allow(self, source, now: float) -> bool:
        b = self._buckets.get(source)
        if b is None:
            if len(self._buckets) >= self.limit:
                self.prune(now)
                if len(self._buckets) >= self.limit:
                    return False  # every slot belongs to a busy source: refuse newcomers for now
            b = self._buckets[source] = [self.burst, now]
        tokens = min(self.burst, b[0] + (now - b[1]) * self.rate)
        b[1] = now
        if tokens < 1.0:
            b[0] = tokens
            return False
        b[0] = tokens - 1.0
        return True

    def prune(self, now: float) -> None:
        """Forget sources whose bucket has filled up again: they are idle."""
        full = (self.burst - 1.0) / self.rate if self.rate else 0.0
        for source in [s for s, b in self._buckets.items() if now - b[1] >= full]:
            del self._buckets[source]

    def __len__(self) -> int:
        return len(self._buckets)


class LoadMeter:
    """Counts events per second; 'under load' from the moment a second holds more than
    `threshold`, through the whole next second, and for as long as the excess lasts."""

    __slots__ = ("threshold", "_window", "_count", "_until")

    def __init__(self, threshold: int):
        self.threshold = threshold
        self._window = float("-inf")
        self._count = 0
        self._until = float("-inf")

    def event(self, now: float) -> bool:
        """Count one event; True if we are under load."""
        if now - self._window >= 1.0:
            if self._count > self.threshold and now - self._window < 2.0:
                self._until = max(self._until, now + 1.0)  # a sustained flood keeps us under load
            self._window, self._count = now, 0
        self._count += 1
        if self._count > self.threshold:
            self._until = now + 1.0
        return now < self._until

    def under_load(self, now: float) -> bool:
        return now < self._until
