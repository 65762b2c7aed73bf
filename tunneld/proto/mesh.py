"""Relay to relay: a relayed datagram whose destination is homed on another relay of the
network, and the relays' liveness pings. Pure: bytes in, bytes out.

Mesh, type 7 (UDP, relay <-> relay, on the relays' own ports)

   0               1               2               3
  +---------------+---------------+-------------------------------+
  |   type = 7    |     kind      |          reserved = 0         |
  +---------------+---------------+-------------------------------+
  |                      sender's boot (8)                        |
  |                         counter (8)                           |
  |  ciphertext of: source (4) | destination (4) | inner (n)      |
  |  tag (16)                                                      |
  +---------------------------------------------------------------+

  kind 0: a relayed message; source and destination are overlay addresses and inner
          is what a node sent behind its RELAYED header (end-to-end encrypted: the
          relays read nothing of it). kind 1: ping, kind 2: pong (inner: 8 bytes).
  kind 3: publishing (0.5 on): inner is a control message (messages.py: pub, open, udp,
          shut) for the node at destination, or from it; source is zero. A relay publishing
          a service of a node homed elsewhere reaches it this way (engine/publish_relay.py).

Every relay of a network holds the network's relay key (they share one identity), so
the mesh key is derived from it: nobody without that key can inject or read a mesh
message. Each relay run picks a random 8-byte boot and seals with a key of its own,
derived from the mesh key and the boot, and a counter from 0: nonces never repeat.
The receiver takes a boot only as etcd lists it for a live relay (set_boots), and keeps
a replay window per boot: an old or replayed message is dropped and counted.
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.exceptions import InvalidTag

from ..drops import Drop
from .aead import chachapoly
from .replay import ReplayWindow

MESH = 7
DATA, PING, PONG, CONTROL = 0, 1, 2, 3
HEADER_LEN = 20
OVERHEAD = HEADER_LEN + 8 + 16  # what a mesh hop adds to a node's inner message
EXTRA = OVERHEAD - 8  # beyond the 8-byte RELAYED header the node already counts
_HEADER = struct.Struct("!BB2x8sQ")


def derive(relay_private: bytes) -> bytes:
    return hashlib.blake2s(b"tunneld relay mesh v1", key=relay_private).digest()


class Mesh:
    def __init__(self, secret: bytes, boot: bytes):
        self.secret = secret
        self.boot = boot
        self._seal = chachapoly(self._key(boot))
        self.counter = 0
        self._peers: dict[bytes, tuple] = {}  # boot -> (its AEAD, its window)
        self.last_drop = Drop.MESH_INVALID

    def _key(self, boot: bytes) -> bytes:
        return hashlib.blake2s(boot, key=self.secret).digest()

    def set_boots(self, boots) -> None:
        """The boots of the live relays (ours excluded): only these are opened."""
        boots = set(boots)
        for b in list(self._peers):
            if b not in boots:
                del self._peers[b]
        for b in boots:
            if b not in self._peers and len(b) == 8:
                self._peers[b] = (chachapoly(self._key(b)), ReplayWindow())

    def seal(self, kind: int, src: bytes, dst: bytes, inner: bytes) -> bytes:
        n = self.counter
        self.counter = n + 1
        header = _HEADER.pack(MESH, kind, self.boot, n)
        return header + self._seal.encrypt(b"\0\0\0\0" + header[12:20], src + dst + inner, header)

    def open(self, data: bytes) -> tuple[int, bytes, bytes, bytes, bytes] | None:
        """(kind, boot, source, destination, inner), or None (last_drop says why)."""
        if len(data) < OVERHEAD:
            self.last_drop = Drop.MESH_MALFORMED
            return None
        _, kind, boot, n = _HEADER.unpack_from(data)
        peer = self._peers.get(boot)
        if peer is None:
            self.last_drop = Drop.MESH_UNKNOWN_RELAY
            return None
        aead, window = peer
        if not window.fresh(n):
            self.last_drop = Drop.MESH_REPLAY
            return None
        header = data[:HEADER_LEN]
        try:
            plain = aead.decrypt(b"\0\0\0\0" + header[12:20], data[HEADER_LEN:], header)
        except InvalidTag:
            self.last_drop = Drop.MESH_INVALID
            return None
        window.mark(n)
        return kind, boot, plain[:4], plain[4:8], plain[8:]
