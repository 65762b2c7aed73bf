"""Cookies: how a responder stays responsive under a flood of handshake initiations.

An INIT costs the relay four Diffie-Hellmans before it knows who sent it; mac1
only proves the sender knows the relay's public key, which every join token
contains. So, as WireGuard does, a relay under load stops doing that work for
an INIT unless its mac2 proves the sender receives at its source address. A
node does the same for INITs from peers (its source, for one that comes through
the relay, is the sender's overlay address, which the relay vouches for):

  initiator                                        relay (under load)
  INIT (mac2 = 0) ------------------------------>  no DH: answer with a cookie
                  <------------------------------  COOKIE (52 bytes, smaller than an INIT)
  INIT (mac2 = MAC(cookie, INIT up to mac2)) --->  mac2 valid: rate-limit by source
                                                   address, then the handshake

The cookie is a MAC of the source address under a secret that changes every
two minutes, so the relay keeps no state per sender. It travels encrypted,
bound (as associated data) to the mac1 of the INIT it answers, so that only
the initiator of that INIT can use it and nobody can forge one for it.

Cookie reply, type 6 (responder -> initiator: relay -> node, or node -> node)

  +---------------+-----------------------------------------------+
  |   type = 6    |                reserved = 0                   |
  +---------------+-----------------------------------------------+
  |                     receiver index (4)                        |
  |                         nonce (12)                            |
  |  encrypted cookie (16) | tag (16)                             |
  +---------------------------------------------------------------+

  AEAD: ChaCha20-Poly1305, key BLAKE2s("cookie--" || relay public key),
  associated data: the mac1 of the INIT being answered. The nonce is random:
  a key that only ever encrypts 16 bytes per reply has no counter to keep.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from . import wire

COOKIE = wire.COOKIE
COOKIE_LEN = 16
COOKIE_REPLY_LEN = wire.COOKIE_REPLY_LEN  # 52
SECRET_LIFETIME = 120.0  # the relay's cookie secret changes this often
COOKIE_LIFETIME = 120.0 - 5.0  # a node stops using a cookie a little before the secret changes
_LABEL = b"cookie--"


def _reply_key(responder_public: bytes) -> bytes:
    return hashlib.blake2s(_LABEL + responder_public).digest()


def _mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2s(data, key=key, digest_size=COOKIE_LEN).digest()


def macs(msg: bytes) -> tuple[bytes, bytes, bytes]:
    """(everything before mac1, mac1, mac2) of a handshake message."""
    end = len(msg) - 2 * wire.MAC_LEN
    return msg[:end], msg[end : end + wire.MAC_LEN], msg[end + wire.MAC_LEN :]


class CookieChecker:
    """The responder's side: checks mac2 and writes cookie replies. No state per sender."""

    def __init__(self, responder_public: bytes, now: float, rand: Callable[[int], bytes]):
        """rand: a cryptographic source (os.urandom): the secret is what makes cookies unforgeable."""
        self._aead = ChaCha20Poly1305(_reply_key(responder_public))
        self._rand = rand
        self._secret = rand(32)
        self._previous = self._secret
        self._rotated = now

    def _rotate(self, now: float) -> None:
        if now - self._rotated >= SECRET_LIFETIME:
            # A cookie handed out just before the change stays good for one more period.
            self._previous = self._secret if now - self._rotated < 2 * SECRET_LIFETIME else self._rand(32)
            self._secret = self._rand(32)
            self._rotated = now

    def cookie(self, source: bytes, now: float) -> bytes:
        self._rotate(now)
        return _mac(self._secret, source)

    def mac2_valid(self, msg: bytes, source: bytes, now: float) -> bool:
        self._rotate(now)
        end = len(msg) - wire.MAC_LEN
        if end <= wire.MAC_LEN:
            return False
        body, mac2 = msg[:end], msg[end:]
        if mac2 == bytes(wire.MAC_LEN):
            return False
        for secret in (self._secret, self._previous):
            if hmac.compare_digest(_mac(_mac(secret, source), body), mac2):
                return True
        return False

    def reply(self, msg: bytes, receiver: bytes, source: bytes, now: float) -> bytes:
        """The COOKIE answering handshake message msg, sent from source."""
        _, mac1, _ = macs(msg)
        nonce = self._rand(12)
        sealed = self._aead.encrypt(nonce, self.cookie(source, now), mac1)
        return bytes((COOKIE, 0, 0, 0)) + receiver + nonce + sealed


class CookieJar:
    """The initiator's side: keeps the cookie a responder gave, and stamps mac2 with it."""

    __slots__ = ("_aead", "_cookie", "_received")

    def __init__(self, responder_public: bytes):
        self._aead = ChaCha20Poly1305(_reply_key(responder_public))
        self._cookie: bytes | None = None
        self._received = 0.0

    def take(self, reply: bytes, answered: bytes, now: float) -> bool:
        """Keep the cookie in reply if it answers our message `answered`; False if not."""
        if len(reply) != COOKIE_REPLY_LEN:
            return False
        _, mac1, _ = macs(answered)
        try:
            cookie = self._aead.decrypt(reply[8:20], reply[20:], mac1)
        except InvalidTag:
            return False
        self._cookie, self._received = cookie, now
        return True

    def stamp(self, msg: bytes, now: float) -> bytes:
        """msg with its mac2 set from a fresh cookie, or as it is when there is none."""
        if self._cookie is None or now - self._received >= COOKIE_LIFETIME:
            return msg
        end = len(msg) - wire.MAC_LEN
        return msg[:end] + _mac(self._cookie, msg[:end])


__all__ = ["COOKIE", "COOKIE_REPLY_LEN", "CookieChecker", "CookieJar", "macs"]
