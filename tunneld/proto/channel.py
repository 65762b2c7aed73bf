"""A session's DATA, sealed and opened: the counter, the header (wire.py), the nonce, the
AEAD and, opening, the replay window of the counter's lane.

Two implementations with one interface: Channel in _aead.c (one call and one allocation
each way, the key set up once), and PyChannel here, used where the C module was not built
or is turned off (aead.py). They give the same bytes and the same verdicts
(tests/unit/test_session.py runs both).

  seal(plaintext, prefix=b"", meta=b"")  prefix + DATA header + ciphertext + tag, or None
                                         once the counter reaches send_limit
  open(msg)                              the plaintext, or None with last_drop set
  send_counter, send_limit               the next counter, and the first never sealed
  window_top(lane)                       the highest counter accepted in a lane, -1: none
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag

from ..drops import Drop
from . import aead, wire
from .replay import WINDOW, ReplayWindow

DROPS = (Drop.SHORT, Drop.REPLAY, Drop.TOO_OLD, Drop.AUTH)  # what the C one names, in its order
_ZERO4 = b"\x00\x00\x00\x00"
_DATA = bytes((wire.DATA,))
_MIN_DATA = wire.DATA_HEADER_LEN + wire.TAG_LEN


def channel(send_key: bytes, recv_key: bytes, suite: int, remote_index: bytes, counter: int, limit: int):
    """Ours in C where built and chosen (aead.NATIVE), PyChannel otherwise."""
    chacha = suite != wire.SUITE_AESGCM
    if aead.NATIVE:
        return aead.Channel(send_key, recv_key, chacha, remote_index, counter, limit, DROPS)
    return PyChannel(send_key, recv_key, chacha, remote_index, counter, limit)


class PyChannel:
    __slots__ = ("send_counter", "send_limit", "last_drop", "_hdr", "_remote", "_encrypt", "_decrypt",
                 "_big_endian_nonce", "_windows")

    def __init__(self, send_key: bytes, recv_key: bytes, chacha: bool, remote_index: bytes, counter: int,
                 limit: int):
        self.send_counter = counter
        self.send_limit = limit
        self.last_drop = Drop.AUTH
        self._remote = remote_index
        self._hdr = _DATA + bytes(3) + remote_index
        make = aead.chachapoly if chacha else aead.aesgcm
        self._encrypt = make(send_key).encrypt
        self._decrypt = make(recv_key).decrypt
        # Noise's nonce encodings: big-endian for AES-GCM, little-endian for ChaChaPoly.
        self._big_endian_nonce = not chacha
        self._windows: dict[int, ReplayWindow] = {}

    def seal(self, plaintext: bytes, prefix: bytes = b"", meta: bytes = b"") -> bytes | None:
        n = self.send_counter
        if n >= self.send_limit:
            return None
        self.send_counter = n + 1
        ctr = n.to_bytes(8, "big")
        hdr = (_DATA + meta + self._remote if meta else self._hdr) + ctr
        nonce = _ZERO4 + (ctr if self._big_endian_nonce else n.to_bytes(8, "little"))
        return prefix + hdr + self._encrypt(nonce, plaintext, hdr)

    def open(self, msg: bytes) -> bytes | None:
        if len(msg) < _MIN_DATA:
            self.last_drop = Drop.SHORT
            return None
        ctr = msg[8:16]
        n = int.from_bytes(ctr, "big")
        replay = self._windows.get(msg[8]) or self._windows.setdefault(msg[8], ReplayWindow())
        if not replay.fresh(n):
            # Seen already, or older than the window spans: the second is also what heavy
            # reordering looks like, so an operator tells them apart.
            self.last_drop = Drop.REPLAY if replay.top - n < WINDOW else Drop.TOO_OLD
            return None
        nonce = _ZERO4 + (ctr if self._big_endian_nonce else n.to_bytes(8, "little"))
        try:
            plaintext = self._decrypt(nonce, msg[16:], msg[:16])
        except InvalidTag:
            self.last_drop = Drop.AUTH
            return None
        replay.mark(n)
        return plaintext

    def window_top(self, lane: int) -> int:
        w = self._windows.get(lane)
        return -1 if w is None else w.top
