"""The data path's AEADs: AES-GCM and ChaCha20-Poly1305 with the key set up once.

`cryptography`'s AEAD objects prepare the cipher on every call: about 1.4 us of a
1,400-byte packet's 2 to 2.5 us, twice per packet per hop (seal and open). _aead.c
keeps one OpenSSL context per direction instead; it is built with tunneld where a C
compiler and OpenSSL's headers are there (pyproject.toml), and where it is not, or the
daemon was told otherwise (choose(); TUNNELD_NATIVE=0, net/base.py), `cryptography`'s
are used. Same calls, same bytes, same InvalidTag: the two are interchangeable, peer to
peer and in tests.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

try:
    from ._aead import Aead, Channel  # Channel: a session's DATA both ways (channel.py)
except ImportError:  # built without a compiler or OpenSSL's headers
    Aead = Channel = None

NATIVE = KIND = None  # ours or not, and what status shows: set by choose(), below


def choose(native: bool) -> None:
    """Ours where built and wanted, cryptography's otherwise: for sessions made from now on."""
    global NATIVE, KIND
    NATIVE = native and Aead is not None
    KIND = "openssl" if NATIVE else "cryptography"


choose(True)


def aesgcm(key: bytes):
    return Aead(key, False) if NATIVE else AESGCM(key)


def chachapoly(key: bytes):
    return Aead(key, True) if NATIVE else ChaCha20Poly1305(key)
