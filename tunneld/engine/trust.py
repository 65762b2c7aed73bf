"""Which peer keys a node accepts from the relay's directory, without I/O.

The relay tells each node the others' keys. Two defences against a relay that lies:

  memory   each peer's key, by name, as last accepted (node.json keeps it across runs).
           A known name with a new key is logged loudly and shown in status: a node that
           was reinstalled, or a relay putting its own key in that node's place.
  the lock (a node that joined with an endorsed token pinned the lock's public key): a
           peer's key is accepted only with a chain that the lock endorses for that key and
           name (proto/lock.py), whatever the relay says. An entry without one is left out:
           no session, no traffic, a line in the log and in status.
"""

from __future__ import annotations

import logging

from ..logs import event
from ..drops import Drop
from ..proto.lock import ChainCache, format_public

log = logging.getLogger("tunneld.node")

MAX_CHANGES = 32  # the key changes status shows, newest last


class Trust:
    def __init__(self, lock: bytes | None, known: tuple, drops, wall):
        self.lock = lock
        self.chains = ChainCache(lock) if lock else None
        self.known: dict[str, bytes] = dict(known)
        self.drops = drops
        self.wall = wall  # seconds since the epoch, for what status shows
        self.unendorsed: dict[str, bytes] = {}  # name -> the key we refused, now
        self.changes: list[dict] = []

    def admit(self, entries: dict) -> tuple[dict, bool]:
        """The entries (by address) whose keys we accept, and whether our memory changed."""
        accepted, changed, unendorsed = {}, False, {}
        for addr, e in entries.items():
            if self.chains is not None and not self.chains.valid(e.lock, e.key, e.name):
                unendorsed[e.name] = e.key
                if self.unendorsed.get(e.name) != e.key:
                    self.drops[Drop.PEER_UNENDORSED] += 1
                    log.error("refusing the key %s… the relay gives for %s: the network lock does not endorse it "
                              "(a relay that puts its own key in a node's place, or a node that joined without "
                              "an endorsed token)", e.key.hex()[:16], e.name)
                continue
            accepted[addr] = e
            before = self.known.get(e.name)
            if before != e.key:
                if before is not None:
                    self.changes = [*self.changes, {"name": e.name, "old_key": before.hex(), "new_key": e.key.hex(),
                                                    "at": self.wall(), "endorsed": self.chains is not None}]
                    self.changes = self.changes[-MAX_CHANGES:]
                    log.warning("KEY CHANGE: %s's key is now %s… (was %s…). Expected if that node was reinstalled "
                                "or its key file deleted; if not, its traffic may be intercepted by whoever "
                                "holds the relay%s", e.name, e.key.hex()[:16], before.hex()[:16],
                                "" if self.chains else " (the network lock prevents this: tunneld lock)",
                                extra=event("key_change", peer=e.name, new_key=e.key.hex(), old_key=before.hex()))
                self.known[e.name] = e.key
                changed = True
        self.unendorsed = unendorsed
        return accepted, changed

    def status(self) -> dict:
        return {"lock": format_public(self.lock) if self.lock else None,
                "unendorsed": sorted(self.unendorsed), "key_changes": list(self.changes)}
