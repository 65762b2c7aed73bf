"""A published TCP connection's hop between the relay and the node, sealed (net/splice.py
carries it).

    relay ──"open" {id, k: 32 random bytes} over the node's session──> node
    node ──TCP to the relay's port──> relay:

       0      1      4              12                       44
       +------+------+--------------+------------------------+
       | WORK | 0  0 0 |  id (8)    |  HMAC-SHA256(k, id)    |   the first frame: which
       +------+------+--------------+------------------------+   connection, and proof of k

    then both ways, one frame (proto/framing.py) per chunk of at most CHUNK bytes:
       AEAD(key of the direction, nonce = a counter from 0, chunk)

k crossed only the node's Noise session, so only that node can present the id; it is
used once. The two directions' keys come from k (HKDF, as Noise's): the relay seals with
one and the node with the other, so a chunk cannot be reflected back at its sender; a
chunk dropped, reordered or replayed fails to open, and the stream is cut.
"""

from __future__ import annotations

import hmac

from . import aead
from .noise import hkdf

WORK = 0x0B
WORK_LEN = 44
CHUNK = 16384
TAG = 16


def work_frame(conn_id: int, k: bytes) -> bytes:
    ident = conn_id.to_bytes(8, "big")
    return bytes((WORK, 0, 0, 0)) + ident + hmac.digest(k, ident, "sha256")


def read_work(frame: bytes) -> int | None:
    """The connection id a WORK frame names (its proof still to check), or None."""
    if len(frame) != WORK_LEN or frame[0] != WORK:
        return None
    return int.from_bytes(frame[4:12], "big")


def proves(frame: bytes, k: bytes) -> bool:
    return hmac.compare_digest(frame[12:WORK_LEN], hmac.digest(k, frame[4:12], "sha256"))


class StreamCipher:
    """One end of the hop: seals what it sends, opens what it receives, counters per direction."""

    def __init__(self, k: bytes, relay_side: bool):
        to_node, to_relay = hkdf(k, b"tunneld publish", 2)
        send, receive = (to_node, to_relay) if relay_side else (to_relay, to_node)
        self._seal, self._open = aead.chachapoly(send), aead.chachapoly(receive)
        self._sent = self._received = 0

    def seal(self, chunk: bytes) -> bytes:
        nonce = self._sent.to_bytes(12, "little")
        self._sent += 1
        return self._seal.encrypt(nonce, chunk, b"")

    def open(self, sealed: bytes) -> bytes | None:
        """The chunk, or None: forged, reordered, replayed or cut (then end the stream)."""
        try:
            chunk = self._open.decrypt(self._received.to_bytes(12, "little"), sealed, b"")
        except Exception:
            return None
        self._received += 1
        return chunk
