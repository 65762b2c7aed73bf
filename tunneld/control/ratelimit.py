"""Token buckets per source, and a meter that says when handshakes come too fast.

Both are pure (time comes in as an argument) and bounded in memory whatever
the senders do: a flood of distinct sources evicts idle buckets, never grows
the table past its limit.
"""

from __future__ import annotations


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
