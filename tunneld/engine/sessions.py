"""One session lifecycle for every party that holds keys with us: a node's peers, a
node's relay link, the relay's members.

A KeyRing holds the transport sessions (proto/session.py) of one party:

    current   we send with it and accept it
    previous  the one before a rekey: accepted while packets sealed with it drain
    pending   a responder's new session: accepted, never sent with, until the
              initiator's first DATA on it proves that it holds the keys

  install(s)   s becomes current: an initiator's finished handshake, or a confirmation.
               current moves to previous; the old previous is forgotten.
  offer(s)     s waits as pending (the responder's side); an older pending one goes.
  confirm(s)   the pending s becomes current (install).
  expire(now)  forgets what is too old: pending after `pending_timeout`, any other
               after REJECT_AFTER_TIME or REJECT_AFTER_MESSAGES. True if current went.
  drop()       forgets all three.

An IndexTable finds them: receiver index -> session, and receiver index -> the
holder of a handshake in flight (its index becomes the session's when it completes).
Indexes are 4 bytes from the random source it is given, never two alike at once.
"""

from __future__ import annotations

from typing import Callable

from ..proto.session import Session


class IndexTable:
    __slots__ = ("sessions", "handshakes", "version", "_random")

    def __init__(self, random: Callable[[int], bytes]):
        self.sessions: dict[bytes, Session] = {}  # read on the hot path
        self.handshakes: dict[bytes, object] = {}  # index of our initiation -> who it is for
        # Bumped on every change a node's workers copy (engine/lanes.py): sessions come, are
        # confirmed and go; a peer's path or its limits change.
        self.version = 0
        self._random = random

    def allocate(self) -> bytes:
        while True:
            index = self._random(4)
            if index not in self.sessions and index not in self.handshakes:
                return index

    def start(self, index: bytes, holder) -> None:
        """An initiation to holder is in flight with this index."""
        self.handshakes[index] = holder

    def finish(self, index: bytes) -> None:
        """The initiation with this index is over (completed, superseded or given up)."""
        self.handshakes.pop(index, None)

    def __len__(self) -> int:
        return len(self.sessions)


class KeyRing:
    __slots__ = ("table", "owner", "current", "previous", "pending")

    def __init__(self, table: IndexTable, owner):
        self.table = table
        self.owner = owner  # what a session of this ring answers to `session.owner`
        self.current: Session | None = None
        self.previous: Session | None = None
        self.pending: Session | None = None

    def _add(self, s: Session) -> None:
        s.owner = self.owner
        self.table.finish(s.local_index)
        self.table.sessions[s.local_index] = s
        self.table.version += 1

    def _forget(self, s: Session | None) -> None:
        if s is not None and self.table.sessions.get(s.local_index) is s:
            del self.table.sessions[s.local_index]
            self.table.version += 1

    def install(self, s: Session) -> None:
        if s is self.pending:
            self.pending = None
        else:
            self._add(s)
        s.confirmed = True
        self.table.version += 1
        self._forget(self.previous)
        self.previous, self.current = self.current, s

    def offer(self, s: Session) -> None:
        self._forget(self.pending)
        self._add(s)
        self.pending = s

    def confirm(self, s: Session) -> None:
        self.install(s)

    def expire(self, now: float, pending_timeout: float) -> bool:
        if self.pending is not None and now - self.pending.created > pending_timeout:
            self._forget(self.pending)
            self.pending = None
        if self.previous is not None and self.previous.expired(now):
            self._forget(self.previous)
            self.previous = None
        if self.current is not None and self.current.expired(now):
            self._forget(self.current)
            self.current = None
            return True
        return False

    def drop(self) -> None:
        for s in (self.current, self.previous, self.pending):
            self._forget(s)
        self.current = self.previous = self.pending = None
