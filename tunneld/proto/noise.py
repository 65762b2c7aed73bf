"""The Noise Protocol Framework (revision 34), the parts tunneld uses.

Only what the IK pattern needs: X25519, AES-256-GCM or ChaCha20-Poly1305,
SHA-256, and the CipherState / SymmetricState / HandshakeState objects of the
specification, section 5. Checked against the published cacophony test vectors
(tests/unit/test_noise.py). Pure: no sockets, no clock, no global state; the
ephemeral key can be passed in so that tests can replay the vectors.

Errors: every failure to read a message raises NoiseError, and a HandshakeState
that raised is not to be used again.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives import serialization

DHLEN = 32
HASHLEN = 32
TAGLEN = 16
_ZERO4 = b"\x00\x00\x00\x00"
_MAX_NONCE = 2**64 - 1


class NoiseError(Exception):
    """A message that does not decrypt or parse; the handshake is over."""


def _nonce_aesgcm(n: int) -> bytes:
    return _ZERO4 + n.to_bytes(8, "big")


def _nonce_chachapoly(n: int) -> bytes:
    return _ZERO4 + n.to_bytes(8, "little")


class CipherSuite:
    """One cipher and hash choice; its name goes into the Noise protocol name."""

    __slots__ = ("name", "aead", "nonce")

    def __init__(self, name, aead, nonce):
        self.name = name
        self.aead = aead
        self.nonce = nonce


AESGCM_SHA256 = CipherSuite("AESGCM", AESGCM, _nonce_aesgcm)
CHACHAPOLY_SHA256 = CipherSuite("ChaChaPoly", ChaCha20Poly1305, _nonce_chachapoly)


def _hash(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, "sha256")


def hkdf(chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
    """HKDF as Noise section 4.3 defines it, with HMAC-SHA256."""
    temp = _hmac(chaining_key, ikm)
    out1 = _hmac(temp, b"\x01")
    out2 = _hmac(temp, out1 + b"\x02")
    if outputs == 2:
        return out1, out2
    return out1, out2, _hmac(temp, out2 + b"\x03")


class KeyPair:
    """An X25519 key pair; public is the 32-byte raw encoding."""

    __slots__ = ("private", "public")

    def __init__(self, private: X25519PrivateKey):
        self.private = private
        self.public = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> "KeyPair":
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> "KeyPair":
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def dh(self, public: bytes) -> bytes:
        try:
            return self.private.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError as exc:  # low-order point: the shared secret would be zero
            raise NoiseError("invalid public key") from exc


class CipherState:
    __slots__ = ("suite", "k", "n", "_aead")

    def __init__(self, suite: CipherSuite):
        self.suite = suite
        self.k: bytes | None = None
        self.n = 0
        self._aead = None

    def initialize_key(self, key: bytes | None) -> None:
        self.k = key
        self.n = 0
        self._aead = None if key is None else self.suite.aead(key)

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        if self.n >= _MAX_NONCE:
            raise NoiseError("nonce exhausted")
        ct = self._aead.encrypt(self.suite.nonce(self.n), plaintext, ad)
        self.n += 1
        return ct

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._aead is None:
            return ciphertext
        if self.n >= _MAX_NONCE:
            raise NoiseError("nonce exhausted")
        try:
            pt = self._aead.decrypt(self.suite.nonce(self.n), ciphertext, ad)
        except InvalidTag as exc:
            raise NoiseError("authentication failed") from exc
        self.n += 1
        return pt


class SymmetricState:
    __slots__ = ("cipher", "ck", "h")

    def __init__(self, suite: CipherSuite, protocol_name: bytes):
        self.cipher = CipherState(suite)
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = _hash(protocol_name)
        self.ck = self.h
        self.cipher.initialize_key(None)

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, ikm, 2)
        self.cipher.initialize_key(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ct = self.cipher.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        pt = self.cipher.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return pt

    def split(self) -> tuple[bytes, bytes]:
        k1, k2 = hkdf(self.ck, b"", 2)
        return k1, k2


# Message patterns, section 7. Only IK is used on the wire.
_PATTERNS = {
    "IK": ((), ("s",), (("e", "es", "s", "ss"), ("e", "ee", "se"))),
}


class HandshakeState:
    """One handshake, one side. write_message/read_message alternate as the pattern says."""

    def __init__(
        self,
        suite: CipherSuite,
        pattern: str,
        initiator: bool,
        prologue: bytes,
        s: KeyPair | None = None,
        e: KeyPair | None = None,
        rs: bytes | None = None,
    ):
        pre_i, pre_r, self._messages = _PATTERNS[pattern]
        name = f"Noise_{pattern}_25519_{suite.name}_SHA256".encode()
        self.protocol_name = name
        self.sym = SymmetricState(suite, name)
        self.sym.mix_hash(prologue)
        self.initiator = initiator
        self.s, self.e, self.rs = s, e, rs
        self.re: bytes | None = None
        self._step = 0
        for token in pre_i:
            self.sym.mix_hash((s.public if initiator else rs) if token == "s" else b"")
        for token in pre_r:
            self.sym.mix_hash((rs if initiator else s.public) if token == "s" else b"")

    @property
    def finished(self) -> bool:
        return self._step >= len(self._messages)

    @property
    def handshake_hash(self) -> bytes:
        return self.sym.h

    def _dh(self, token: str) -> bytes:
        # es: initiator's e with responder's s, and so on; each side computes its half.
        a, b = token
        if self.initiator:
            local = self.e if a == "e" else self.s
            remote = self.re if b == "e" else self.rs
        else:
            local = self.e if b == "e" else self.s
            remote = self.re if a == "e" else self.rs
        return local.dh(remote)

    def write_message(self, payload: bytes) -> bytes:
        tokens = self._messages[self._step]
        out = []
        for token in tokens:
            if token == "e":
                if self.e is None:
                    self.e = KeyPair.generate()
                out.append(self.e.public)
                self.sym.mix_hash(self.e.public)
            elif token == "s":
                out.append(self.sym.encrypt_and_hash(self.s.public))
            else:
                self.sym.mix_key(self._dh(token))
        out.append(self.sym.encrypt_and_hash(payload))
        self._step += 1
        return b"".join(out)

    def read_message(self, message: bytes) -> bytes:
        # A message that fails leaves the state as it was: anyone can send a forged response
        # to an INIT in flight, and it must not spoil the handshake for the genuine one.
        sym, cipher = self.sym, self.sym.cipher
        saved = (sym.h, sym.ck, cipher.k, cipher.n, self.re, self.rs)
        try:
            return self._read_message(message)
        except NoiseError:
            sym.h, sym.ck, key, n, self.re, self.rs = saved
            cipher.initialize_key(key)
            cipher.n = n
            raise

    def _read_message(self, message: bytes) -> bytes:
        tokens = self._messages[self._step]
        pos = 0
        for token in tokens:
            if token == "e":
                if len(message) < pos + DHLEN:
                    raise NoiseError("message too short")
                self.re = bytes(message[pos : pos + DHLEN])
                pos += DHLEN
                self.sym.mix_hash(self.re)
            elif token == "s":
                size = DHLEN + (TAGLEN if self.sym.cipher.k is not None else 0)
                if len(message) < pos + size:
                    raise NoiseError("message too short")
                self.rs = self.sym.decrypt_and_hash(bytes(message[pos : pos + size]))
                pos += size
            else:
                self.sym.mix_key(self._dh(token))
        if len(message) < pos + TAGLEN:
            raise NoiseError("message too short")
        payload = self.sym.decrypt_and_hash(bytes(message[pos:]))
        self._step += 1
        return payload

    def split(self) -> tuple[bytes, bytes]:
        """(initiator→responder key, responder→initiator key)."""
        return self.sym.split()
