"""Our side of a handshake in flight, the same for the relay link and for every peer.

  start(payload, now)        a new INIT (a fresh index and ephemeral key; any older INIT
                             of ours is forgotten), stamped with the responder's cookie
                             when we hold one: the bytes to send
  complete(resp, now)        the RESP to it -> (Session, payload), or ProtocolError
  take_cookie(reply, now)    a responder under load sent a cookie for our INIT: keep it,
                             and return the INIT to send again with mac2, once per INIT
                             (a cookie never makes us send more); else None, counted
  stop()                     give the handshake up
"""

from __future__ import annotations

from ..drops import Drop
from ..proto.cookie import CookieJar
from ..proto.handshake import Identity, Initiation
from ..proto.noise import KeyPair
from ..proto.session import Session
from .effects import Env
from .sessions import IndexTable


class Initiator:
    __slots__ = ("table", "holder", "identity", "remote", "suite", "env", "initiation", "cookies",
                 "cookie_resent")

    def __init__(self, table: IndexTable, holder, identity: Identity, remote: bytes, suite: int, env: Env):
        self.table = table
        self.holder = holder  # what the table names as waiting on our index
        self.identity = identity
        self.remote = remote
        self.suite = suite
        self.env = env
        self.initiation: Initiation | None = None
        self.cookies = CookieJar(remote)
        self.cookie_resent: Initiation | None = None

    @property
    def index(self) -> bytes | None:
        return None if self.initiation is None else self.initiation.local_index

    def start(self, payload: bytes, now: float) -> bytes:
        self.stop()
        index = self.table.allocate()
        self.initiation = Initiation(self.identity, self.remote, self.suite, index, payload, now,
                                     KeyPair.from_private_bytes(self.env.random(32)))
        self.table.start(index, self.holder)
        return self.cookies.stamp(self.initiation.message, now)

    def complete(self, msg: bytes, now: float) -> tuple[Session, bytes]:
        s, payload = self.initiation.complete(msg, now)
        self.table.finish(self.initiation.local_index)
        self.initiation = None
        return s, payload

    def take_cookie(self, msg: bytes, now: float, drops, counts) -> bytes | None:
        init = self.initiation
        if init is None or msg[4:8] != init.local_index:
            drops[Drop.UNEXPECTED_COOKIE] += 1
            return None
        if not self.cookies.take(msg, init.message, now):
            drops[Drop.BAD_COOKIE] += 1
            return None
        counts["cookies"] += 1
        if self.cookie_resent is init:
            return None
        self.cookie_resent = init
        return self.cookies.stamp(init.message, now)

    def stop(self) -> None:
        if self.initiation is not None:
            self.table.finish(self.initiation.local_index)
            self.initiation = None
