"""Exponential backoff with jitter, for reconnecting to the relay forever.

Jitter spreads a fleet of nodes that lost the relay at the same moment, so that
a restarted relay is not hit by all of them at once.
"""

from __future__ import annotations

from typing import Callable


class Backoff:
    def __init__(self, rng: Callable[[], float], base: float = 0.5, cap: float = 8.0):
        """rng: a float in [0, 1) for the jitter (engine/effects.py's Env.uniform)."""
        self.base = base
        self.cap = cap
        self._rng = rng
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2 ** min(self.attempt, 20)))
        self.attempt += 1
        return delay * (0.5 + 0.5 * self._rng())

    def reset(self) -> None:
        self.attempt = 0
