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

from .channel import channel

REKEY_AFTER_TIME = 120.0
REJECT_AFTER_TIME = 180.0
REKEY_AFTER_MESSAGES = 2**32
REJECT_AFTER_MESSAGES = 2**33
LANE_SHIFT = 56
LANE_MASK = (1 << LANE_SHIFT) - 1


class Session:
    # seal, open and window_top are the channel's own (channel.py): in C, a packet sealed or
    # opened costs no Python frame at all.
    __slots__ = ("local_index", "remote_index", "suite", "initiator", "created", "confirmed", "owner", "keys",
                 "channel", "seal", "open", "window_top")

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
        self.keys = (send_key, recv_key)  # for the node's workers (engine/lanes.py)
        first = lane << LANE_SHIFT
        self.channel = ch = channel(send_key, recv_key, suite, remote_index, first, first + REJECT_AFTER_MESSAGES)
        self.seal = ch.seal  # (plaintext, prefix=b"", meta=b""): DATA, or None at the limit
        self.open = ch.open  # (msg): plaintext, or None and last_drop says why
        self.window_top = ch.window_top  # (lane): the highest counter it accepted, -1 for none

    @property
    def send_counter(self) -> int:
        return self.channel.send_counter

    @send_counter.setter
    def send_counter(self, value: int) -> None:
        self.channel.send_counter = value

    @property
    def send_limit(self) -> int:
        return self.channel.send_limit

    @send_limit.setter
    def send_limit(self, value: int) -> None:
        self.channel.send_limit = value

    @property
    def last_drop(self):
        return self.channel.last_drop

    def expired(self, now: float) -> bool:
        return now - self.created >= REJECT_AFTER_TIME or self.send_counter >= self.send_limit

    def wants_rekey(self, now: float) -> bool:
        # Only the initiator rekeys on age, so that both sides do not race; a responder
        # whose initiator went quiet rekeys a little later.
        age = now - self.created
        limit = REKEY_AFTER_TIME if self.initiator else REKEY_AFTER_TIME + 15.0
        return age >= limit or self.send_counter & LANE_MASK >= REKEY_AFTER_MESSAGES
