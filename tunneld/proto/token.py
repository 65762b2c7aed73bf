"""Join tokens.

  tdj1.<base64url without padding of:>
  +----------------------------+--------------+------------------+
  | relay public key (32)      | token id (8) | secret (16)      |
  +----------------------------+--------------+------------------+

The public key lets the node authenticate the relay before it sends anything
(as kubeadm's discovery hash does); the id and secret are what the relay checks.
The relay stores only a hash of the secret.

An endorsed token (`tunneld lock endorse`) is the same, then the network lock's
endorsement (proto/lock.py draws it): tde1.<base64url of the above | lock public (32) |
enroll seed (32) | sig1 (64)>. Only id and secret ever go to the relay.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from typing import Callable

PREFIX = "tdj1."
ENDORSED_PREFIX = "tde1."
ID_LEN = 8
SECRET_LEN = 16
_RAW_LEN = 32 + ID_LEN + SECRET_LEN
_ENDORSEMENT_LEN = 32 + 32 + 64


@dataclass(frozen=True)
class Endorsement:
    lock_public: bytes
    enroll_seed: bytes  # secret: it signs this node's key (lock.chain)
    sig1: bytes


class TokenError(ValueError):
    """The text is not a tunneld join token."""


@dataclass(frozen=True)
class JoinToken:
    relay_public: bytes
    token_id: bytes
    secret: bytes
    endorsement: Endorsement | None = None

    @classmethod
    def new(cls, relay_public: bytes, random: Callable[[int], bytes]) -> "JoinToken":
        """random: a cryptographic source (os.urandom); the secret is what admits a node."""
        return cls(relay_public, random(ID_LEN), random(SECRET_LEN))

    def encode(self) -> str:
        raw = self.relay_public + self.token_id + self.secret
        e = self.endorsement
        if e is not None:
            raw += e.lock_public + e.enroll_seed + e.sig1
        return (PREFIX if e is None else ENDORSED_PREFIX) + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    @classmethod
    def parse(cls, text: str) -> "JoinToken":
        text = text.strip()
        endorsed = text.startswith(ENDORSED_PREFIX)
        if not text.startswith(PREFIX) and not endorsed:
            raise TokenError("a join token starts with 'tdj1.' (or 'tde1.' when endorsed); print one on the "
                             "relay with 'tunneld token'")
        body = text[len(PREFIX):]
        try:
            raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            raise TokenError("the join token is damaged (not base64url); copy it again from 'tunneld token'") from None
        if len(raw) != _RAW_LEN + (_ENDORSEMENT_LEN if endorsed else 0):
            raise TokenError("the join token is truncated or too long; copy it again from 'tunneld token'")
        e = raw[_RAW_LEN:]
        endorsement = Endorsement(e[:32], e[32:64], e[64:]) if endorsed else None
        return cls(raw[:32], raw[32 : 32 + ID_LEN], raw[32 + ID_LEN : _RAW_LEN], endorsement)

    @property
    def credential(self) -> bytes:
        """What the node sends the relay (inside the encrypted handshake): id + secret."""
        return self.token_id + self.secret


def secret_hash(secret: bytes) -> bytes:
    return hashlib.sha256(b"tunneld token " + secret).digest()


def secret_matches(secret: bytes, stored_hash: bytes) -> bool:
    return hmac.compare_digest(secret_hash(secret), stored_hash)
