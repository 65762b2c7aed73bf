"""A transport session: one pair of keys from a finished handshake.

seal() turns a plaintext into a DATA message (wire.py) with the next counter;
open() authenticates and decrypts one, or returns None and names the reason in
last_drop. Both are on the hot path: no logging, no exceptions on good traffic.
Lifetimes follow WireGuard's: the initiator rekeys after REKEY_AFTER_TIME, and
nobody uses a session after REJECT_AFTER_TIME or REJECT_AFTER_MESSAGES.

Lanes: a node with several workers (net/node_worker.py) seals one session in each of
them at once. Each worker is a lane, and the counter's top byte names it:

   counter = lane << 56 | n      n = 0, 1, 2 ... in that lane alone

so nonces stay unique without a shared counter, and the receiver keeps one replay window
per lane, each in the one worker its steering program (net/steer.py) gives the lane to:
replay protection stays exact. A 0.3.0 peer knows one window and lane 0 alone; a worker
seals for a peer only if it announced the "lanes" capability (version.py).
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag

from ..drops import Drop
from . import wire
from .aead import aesgcm, chachapoly
from .replay import WINDOW, ReplayWindow

REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_AFTER_MESSAGES = 2**32
REJECT_AFTER_MESSAGES = 2**33
LANE_SHIFT = 56
LANE_MASK = (1 << LANE_SHIFT) - 1
_ZERO4 = b"\x00\x00\x00\x00"
_DATA_TYPE = bytes((wire.DATA, 0, 0, 0))
_MIN_DATA = wire.DATA_HEADER_LEN + wire.TAG_LEN


class Session:
    __slots__ = (
        "local_index", "remote_index", "suite", "initiator", "created", "confirmed",
        "owner", "send_counter", "send_limit", "replay", "lanes", "last_drop", "keys", "_hdr", "_encrypt",
        "_decrypt", "_big_endian_nonce",
    )

    def __init__(self, local_index: bytes, remote_index: bytes, suite: int,
                 send_key: bytes, recv_key: bytes, initiator: bool, created: float, lane: int = 0):
        self.local_index = local_index
        self.remote_index = remote_index
        self.suite = suite
        self.initiator = initiator
        self.created = created
        # A responder may not send until the initiator has proved it holds the keys
        # (its first DATA arrived); a replayed initiation thus never takes over.
        self.confirmed = initiator
        self.owner = None
        self.send_counter = lane << LANE_SHIFT
        self.send_limit = self.send_counter + REJECT_AFTER_MESSAGES
        self.replay = ReplayWindow()  # lane 0's
        self.lanes: dict[int, ReplayWindow] = {}  # the others', made as they first appear
        self.keys = (send_key, recv_key)  # for the node's workers (engine/lanes.py)
        self.last_drop = Drop.AUTH
        self._hdr = _DATA_TYPE + remote_index
        aead = aesgcm if suite == wire.SUITE_AESGCM else chachapoly
        self._encrypt = aead(send_key).encrypt
        self._decrypt = aead(recv_key).decrypt
        # Noise's nonce encodings: big-endian for AES-GCM, little-endian for ChaChaPoly.
        self._big_endian_nonce = suite == wire.SUITE_AESGCM

    def seal(self, plaintext: bytes, prefix: bytes = b"", meta: bytes = b"") -> bytes | None:
        """meta: the header's 3 bytes after the type (a checksum's place, wire.py), or zeros."""
        n = self.send_counter
        if n >= self.send_limit:
            return None
        self.send_counter = n + 1
        ctr = n.to_bytes(8, "big")
        hdr = (b"\x03" + meta + self.remote_index if meta else self._hdr) + ctr
        nonce = _ZERO4 + (ctr if self._big_endian_nonce else n.to_bytes(8, "little"))
        return prefix + hdr + self._encrypt(nonce, plaintext, hdr)

    def open(self, msg: bytes) -> bytes | None:
        if len(msg) < _MIN_DATA:
            self.last_drop = Drop.SHORT
            return None
        ctr = msg[8:16]
        n = int.from_bytes(ctr, "big")
        lane = msg[8]
        replay = self.replay if not lane else (self.lanes.get(lane) or self._lane(lane))
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

    def _lane(self, lane: int) -> ReplayWindow:
        w = self.lanes[lane] = ReplayWindow()  # at most 255: the top byte's values
        return w

    def expired(self, now: float) -> bool:
        return now - self.created >= REJECT_AFTER_TIME or self.send_counter >= self.send_limit

    def wants_rekey(self, now: float) -> bool:
        # Only the initiator rekeys on age, so that both sides do not race; a responder
        # whose initiator went quiet rekeys a little later.
        age = now - self.created
        limit = REKEY_AFTER_TIME if self.initiator else REKEY_AFTER_TIME + 15.0
        return age >= limit or self.send_counter & LANE_MASK >= REKEY_AFTER_MESSAGES
