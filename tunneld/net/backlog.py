"""How long peers' data waited in a UDP socket's receive queue, and when to stop opening it.

Behind a flood, a socket's 4 MB buffer (base.py) holds tens of thousands of small datagrams
in GRO trains: seconds of work for a process that has fallen behind, which every later packet
waits out, a ping as long as the flood. The kernel stamps each read with the time it took the
datagram in (SO_TIMESTAMPNS), and Backlog follows that wait as CoDel (RFC 8289) follows a
queue's sojourn time:

  waited < TARGET                    a short queue: nothing to do, and any watch ends
  waited >= TARGET, first time       a watch starts: it is a standing queue only if it lasts
  waited >= TARGET for INTERVAL      a standing queue: every train of peers' data that waited
                                     TARGET or more is dropped unopened (`stale`), until a
                                     read comes that waited less

A drop costs one read, so the queue drains to what is fresh in moments, and TCP inside sees a
loss where it would have seen seconds of delay. A process that only paused (its loop held up
for a while) catches up on waking well within INTERVAL, and drops nothing.

Only the peers' data is ever dropped: relayed DATA, and on a node DATA from anyone but its
relay (whose DATA carries the relay link's control, pongs among them). Handshakes and control
messages are read however late: late is better than never for them.
"""

from __future__ import annotations

import socket

from ..proto.wire import DATA, RELAYED, RELAYED_HEADER_LEN

SO_TIMESTAMPNS = 35  # <asm-generic/socket.h>; its control message, SCM_TIMESTAMPNS, is the same
TARGET = 0.005  # seconds of wait that make a queue worth watching (CoDel's own target)
INTERVAL = 0.1  # seconds it must last to be a standing queue and not a burst


def enable_stamps(sock: socket.socket) -> bool:
    """The kernel's receive time on every read; without it nothing is ever stale."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        return True
    except OSError:
        return False


class Backlog:
    """keep: where a node's relay speaks from (its DATA is never stale), () on a node without
    one over UDP, None on the relay (where only relayed DATA is the peers')."""

    __slots__ = ("keep", "watch_until")

    def __init__(self, keep=None):
        self.keep = keep
        self.watch_until = 0.0  # when the wait, above TARGET since, makes a standing queue; 0: none

    def stale(self, first: bytes, addr, waited: float, now: float) -> bool:
        """Whether a read (its first datagram, its sender, how long it waited) is to be dropped."""
        if waited < TARGET:
            self.watch_until = 0.0
            return False
        if not self.watch_until:
            self.watch_until = now + INTERVAL
            return False
        if now < self.watch_until or not first:
            return False
        kind = first[0]
        if kind == RELAYED:
            return len(first) > RELAYED_HEADER_LEN and first[RELAYED_HEADER_LEN] == DATA
        return kind == DATA and self.keep is not None and addr != self.keep
