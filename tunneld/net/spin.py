"""A bounded busy-poll after data, so that a round trip does not pay for waking us up.

A ping through the overlay crosses each tunneld twice, and each crossing used to begin
with the kernel waking a process asleep in epoll: on a VM, tens to hundreds of
microseconds each (the vCPU halts, the host schedules it back). After a callback that
moved data, the daemon stays awake for `window` seconds polling its own descriptors
without sleeping, so that the answer, which usually comes back within that time, is read
at once. It costs nothing while idle (no data, no spinning), at most `window` after each
burst of data, and nothing under load, where the loop never sleeps anyway.

TUNNELD_BUSY_POLL_US (default 1500; 0 turns it off) sets the window.
"""

from __future__ import annotations

import os
import select
from time import monotonic

from ..errors import ConfigError

DEFAULT_US = 1500
MAX_US = 100_000


def window_from_env() -> float:
    text = os.environ.get("TUNNELD_BUSY_POLL_US", str(DEFAULT_US))
    try:
        us = int(text)
    except ValueError:
        us = -1
    if not 0 <= us <= MAX_US:
        raise ConfigError(f"TUNNELD_BUSY_POLL_US={text[:20]!r}: give microseconds, 0 to {MAX_US}")
    return us / 1e6


class Spinner:
    def __init__(self, loop, handlers: dict, window: float):
        """handlers: fd -> the readiness callback the loop calls for it."""
        self.loop = loop
        self.handlers = handlers
        self.window = window
        self.poll = select.poll()
        for fd in handlers:
            self.poll.register(fd, select.POLLIN)
        self.until = 0.0
        self.pending = None
        self.spins = 0  # how often it found input instead of sleeping (status)

    def kick(self, now: float) -> None:
        """Data moved: keep polling until now + window."""
        if self.window <= 0:
            return
        self.until = now + self.window
        if self.pending is None:
            self.pending = self.loop.call_soon(self._spin)

    def _spin(self) -> None:
        self.pending = None
        poll, until, handlers = self.poll.poll, self.until, self.handlers
        # Bounded: at most `window`, and back to the loop after each batch of input, so
        # timers and the control socket keep their turn.
        while monotonic() < until:
            ready = poll(0)
            if ready:
                self.spins += 1
                for fd, _ in ready:
                    handler = handlers.get(fd)
                    if handler is not None:
                        handler()
                return

    def close(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            self.pending = None
        self.handlers = {}
