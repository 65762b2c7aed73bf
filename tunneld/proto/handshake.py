"""tunneld's handshake: Noise IK over the INIT/RESP messages of wire.py.

The initiator always knows the responder's static key in advance: a node learns
the relay's from its join token, and every peer's from the relay's directory.
IK then authenticates both sides in one round trip and hides the initiator's
identity from observers.

    initiator                                   responder
    Initiation(...) ------ INIT (e, es, s, ss, payload) ----->  read_initiation()
                                                                 -> Incoming: who, what
    Initiation.complete() <---- RESP (e, ee, se, payload) ----  Incoming.accept()
    -> Session (confirmed)                                       -> Session (unconfirmed
                                                                    until the first DATA)

Both messages carry mac1, keyed by the receiver's public key, so that a
responder can drop noise with one hash instead of four Diffie-Hellmans.
"""

from __future__ import annotations

import struct
from typing import Callable

from . import wire
from .errors import HandshakeError, ProtocolError
from .noise import AESGCM_SHA256, CHACHAPOLY_SHA256, HandshakeState, KeyPair, NoiseError
from .session import Session

PROLOGUE = b"tunneld v1"
_NOISE_SUITES = {wire.SUITE_AESGCM: AESGCM_SHA256, wire.SUITE_CHACHAPOLY: CHACHAPOLY_SHA256}
_TAI64 = struct.Struct("!QI")
TIMESTAMP_LEN = 12


def tai64n(unix_ns: int) -> bytes:
    """A TAI64N label: big-endian, so newer timestamps compare greater as bytes."""
    sec, nsec = divmod(unix_ns, 1_000_000_000)
    return _TAI64.pack(0x400000000000000A + sec, nsec)


class Timestamper:
    """The timestamps of one identity's initiations: TAI64N of the wall clock it is given,
    strictly increasing, so that a responder never takes a fresh handshake for a replay
    (even when the clock steps back, or two initiations fall in one nanosecond)."""

    __slots__ = ("_wall_ns", "_last")

    def __init__(self, wall_ns: Callable[[], int]):
        self._wall_ns = wall_ns
        self._last = b""

    def __call__(self) -> bytes:
        ts = tai64n(self._wall_ns())
        if ts <= self._last:
            ts = (int.from_bytes(self._last, "big") + 1).to_bytes(TIMESTAMP_LEN, "big")
        self._last = ts
        return ts


class Identity:
    """A static key pair with the mac1 key others use to reach it."""

    __slots__ = ("keypair", "public", "mac1_key")

    def __init__(self, keypair: KeyPair):
        self.keypair = keypair
        self.public = keypair.public
        self.mac1_key = wire.mac1_key(keypair.public)

    @classmethod
    def generate(cls) -> "Identity":
        return cls(KeyPair.generate())

    @classmethod
    def from_random(cls, random: Callable[[int], bytes]) -> "Identity":
        return cls(KeyPair.from_private_bytes(random(32)))


class Initiation:
    """Our INIT in flight. complete() takes the matching RESP and yields a Session."""

    __slots__ = ("_hs", "local_index", "remote_public", "suite", "message", "created", "_mac1_key")

    def __init__(self, identity: Identity, remote_public: bytes, suite: int, local_index: bytes,
                 payload: bytes, now: float, ephemeral: KeyPair | None = None):
        self._hs = HandshakeState(_NOISE_SUITES[suite], "IK", True, PROLOGUE,
                                  s=identity.keypair, e=ephemeral, rs=remote_public)
        self.local_index = local_index
        self.remote_public = remote_public
        self.suite = suite
        self.created = now
        self._mac1_key = identity.mac1_key
        try:
            noise = self._hs.write_message(payload)
        except NoiseError as exc:  # the remote static key is a low-order point
            raise HandshakeError("bad remote key") from exc
        self.message = wire.build_init(suite, local_index, noise, wire.mac1_key(remote_public))

    def complete(self, msg: bytes, now: float) -> tuple[Session, bytes]:
        suite, sender, receiver, noise = wire.parse_resp(msg)
        if receiver != self.local_index or suite != self.suite:
            raise HandshakeError("response to another handshake")
        if not wire.mac1_valid(msg, self._mac1_key):
            raise HandshakeError("mac1")
        try:
            payload = self._hs.read_message(noise)
        except NoiseError as exc:
            raise HandshakeError("response does not authenticate") from exc
        send_key, recv_key = self._hs.split()
        return Session(self.local_index, sender, suite, send_key, recv_key, True, now), payload


class Incoming:
    """An INIT that authenticated: who sent it (remote_public) and what it says (payload)."""

    __slots__ = ("_hs", "remote_public", "remote_index", "payload", "suite")

    def __init__(self, hs: HandshakeState, remote_index: bytes, payload: bytes, suite: int):
        self._hs = hs
        self.remote_public = hs.rs
        self.remote_index = remote_index
        self.payload = payload
        self.suite = suite

    def accept(self, local_index: bytes, payload: bytes, now: float,
               ephemeral: KeyPair | None = None) -> tuple[bytes, Session]:
        if ephemeral is not None:
            self._hs.e = ephemeral
        noise = self._hs.write_message(payload)
        resp = wire.build_resp(self.suite, local_index, self.remote_index, noise,
                               wire.mac1_key(self.remote_public))
        recv_key, send_key = self._hs.split()
        return resp, Session(local_index, self.remote_index, self.suite, send_key, recv_key, False, now)


def read_initiation(identity: Identity, msg: bytes) -> Incoming:
    """Authenticate an INIT addressed to identity, or raise ProtocolError / HandshakeError.

    HandshakeError.args[0] == "mac1" means the sender does not know our key at all.
    """
    suite, sender, noise = wire.parse_init(msg)
    if not wire.mac1_valid(msg, identity.mac1_key):
        raise HandshakeError("mac1")
    hs = HandshakeState(_NOISE_SUITES[suite], "IK", False, PROLOGUE, s=identity.keypair)
    try:
        payload = hs.read_message(noise)
    except NoiseError as exc:
        raise HandshakeError("initiation does not authenticate") from exc
    return Incoming(hs, sender, payload, suite)


__all__ = ["Identity", "Initiation", "Incoming", "read_initiation", "tai64n", "Timestamper", "ProtocolError",
           "HandshakeError", "TIMESTAMP_LEN", "PROLOGUE"]
