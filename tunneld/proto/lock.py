"""The network lock: an operator's key, which the relay never holds, endorses every node key
that nodes accept, so that a compromised relay can still admit and refuse nodes but can no
longer put a key of its own in anyone's place.

  lock key          Ed25519; the public half travels as tdl1.<base64url of 32 bytes>
  endorsed token    tde1.<base64url of:>
    +-----------------+-------------+-----------+----------------+-----------------+-----------+
    | relay key (32)  | token id (8)| secret(16)| lock public(32)| enroll seed (32)| sig1 (64) |
    +-----------------+-------------+-----------+----------------+-----------------+-----------+
    sig1 = Sign(lock, "tunneld lock 1 enroll" | lock public | token id | enroll public)
    enroll public: the Ed25519 public key of enroll seed, made by `tunneld lock endorse`

  chain (a node's, 168 bytes, sent to the relay in every join and to every node in the
  directory):
    +-------------+------------------+-----------+-----------+
    | token id (8)| enroll public(32)| sig1 (64) | sig2 (64) |
    +-------------+------------------+-----------+-----------+
    sig2 = Sign(enroll seed, "tunneld lock 1 key" | lock public | node key (32) | node name)

The relay sees the token id and secret (it checks them) but never the enroll seed: only
the node that holds the endorsed token can sign its own key with it. A peer accepts a node
key only with a chain that verifies under the lock public key it pinned.
"""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PUBLIC_PREFIX = "tdl1."
CHAIN_LEN = 8 + 32 + 64 + 64
_ENROLL = b"tunneld lock 1 enroll"
_KEY = b"tunneld lock 1 key"


class LockError(ValueError):
    """Not a lock key, or a signature that does not verify."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise LockError(f"{what} is damaged (not base64url)") from None


def _public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _verify(public: bytes, signature: bytes, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


def public_of(seed: bytes) -> bytes:
    return _public(Ed25519PrivateKey.from_private_bytes(seed))


def format_public(public: bytes) -> str:
    return PUBLIC_PREFIX + _b64(public)


def parse_public(text: str) -> bytes:
    text = text.strip()
    if not text.startswith(PUBLIC_PREFIX):
        raise LockError("a lock public key starts with 'tdl1.'; 'tunneld lock init' prints it")
    raw = _unb64(text[len(PUBLIC_PREFIX):], "the lock public key")
    if len(raw) != 32:
        raise LockError("the lock public key is truncated or too long; copy it again")
    return raw


def endorse(lock_seed: bytes, token_id: bytes, enroll_seed: bytes) -> tuple[bytes, bytes]:
    """(lock public, sig1): the lock's word that whoever holds enroll_seed may enrol keys."""
    lock = Ed25519PrivateKey.from_private_bytes(lock_seed)
    lock_public = _public(lock)
    return lock_public, lock.sign(_ENROLL + lock_public + token_id + public_of(enroll_seed))


def chain(lock_public: bytes, token_id: bytes, enroll_seed: bytes, sig1: bytes, node_key: bytes,
          name: str) -> bytes:
    """The node's chain for its key and name, made on the node from its endorsed token."""
    enroll = Ed25519PrivateKey.from_private_bytes(enroll_seed)
    sig2 = enroll.sign(_KEY + lock_public + node_key + name.encode())
    return token_id + _public(enroll) + sig1 + sig2


def verify(lock_public: bytes, chain_: bytes, node_key: bytes, name: str) -> bool:
    """Does chain_ endorse node_key, under this name, by the lock?"""
    if not isinstance(chain_, bytes) or len(chain_) != CHAIN_LEN:
        return False
    token_id, enroll_public, sig1, sig2 = chain_[:8], chain_[8:40], chain_[40:104], chain_[104:]
    return (_verify(lock_public, sig1, _ENROLL + lock_public + token_id + enroll_public)
            and _verify(enroll_public, sig2, _KEY + lock_public + node_key + name.encode()))


class ChainCache:
    """Verified (key, name, chain) triples: a directory snapshot re-verifies nothing it saw."""

    def __init__(self, lock_public: bytes, most: int = 4096):
        self.lock_public = lock_public
        self._ok: dict[tuple[bytes, str, bytes], bool] = {}
        self._most = most

    def valid(self, chain_: bytes, node_key: bytes, name: str) -> bool:
        k = (node_key, name, chain_)
        ok = self._ok.get(k)
        if ok is None:
            if len(self._ok) >= self._most:
                self._ok.clear()
            ok = self._ok[k] = verify(self.lock_public, chain_, node_key, name)
        return ok
