"""tunneld's wire format, version 1.

Every message is one UDP datagram, or one frame of a TCP stream (see framing.py).
The first byte is the type. Integers are big-endian. Indexes are 4 opaque bytes
chosen at random by the side that receives with them.

Handshake initiation, type 1 (Noise IK message 1; node -> relay, or node -> node)

   0               1               2               3
  +---------------+---------------+-------------------------------+
  |   type = 1    |     suite     |          reserved = 0         |
  +---------------+---------------+-------------------------------+
  |                      sender index (4)                         |
  +---------------------------------------------------------------+
  |  e (32) | encrypted s (32+16) | encrypted payload (n+16)      |
  +---------------------------------------------------------------+
  |  mac1 (16): keyed BLAKE2s over all bytes before it            |
  |  mac2 (16): cookie MAC, zero unless the responder asked       |
  +---------------------------------------------------------------+

Handshake response, type 2 (Noise IK message 2)

  +---------------+---------------+-------------------------------+
  |   type = 2    |     suite     |          reserved = 0         |
  +---------------+---------------+-------------------------------+
  |                      sender index (4)                         |
  |                     receiver index (4)                        |
  |  e (32) | encrypted payload (n+16)                            |
  |  mac1 (16) | mac2 (16)                                        |
  +---------------------------------------------------------------+

Transport data, type 3 (AEAD: the 16 header bytes are the associated data)

  +---------------+---------------+---------------+---------------+
  |   type = 3    |  csum start   |  csum offset  | reserved = 0  |
  +---------------+---------------+---------------+---------------+
  |                     receiver index (4)                        |
  |                        counter (8)                            |
  |  ciphertext of the plaintext (n) | tag (16)                   |
  +---------------------------------------------------------------+

  Plaintext on a node<->node session: an IPv4 packet (first nibble 4), an
  empty keepalive, or a probe: 0x01 + 8 bytes (request), 0x02 + 8 bytes (reply).
  An IPv4 packet's TCP or UDP checksum may be partial (the pseudo-header sum
  only, as the sender's kernel left it): the AEAD tag protects every byte, and
  the receiver hands such packets to its kernel as checksum-partial
  (engine/offload.py). One datagram always carries one packet.
  A packet whose partial checksum lies deeper (a pod's TCP inside flannel's
  VXLAN) names its place in the header: csum start (from the packet's first
  byte; 0 = none) and csum offset, so that the receiver's kernel, not Python,
  completes it. Both are authenticated, and cost no byte of the MTU.
  Plaintext on a node<->relay session: one msgpack control message (messages.py).

Relayed, type 4 (node <-> relay; the relay never looks past byte 8)

  +---------------+-----------------------------------------------+
  |   type = 4    |                reserved = 0                   |
  +---------------+-----------------------------------------------+
  |  peer overlay address (4): destination to the relay,          |
  |                            source from the relay              |
  |  inner message: a type 1, 2, 3 or 6 message between two nodes|
  +---------------------------------------------------------------+

Hint, type 5 (relay -> node, unauthenticated: it may only prompt a rate-limited
re-handshake, never tear anything down)

  +---------------+---------------+-------------------------------+
  |   type = 5    |    reason     |          reserved = 0         |
  |                     index (4)                                 |
  +---------------------------------------------------------------+

Cookie reply, type 6 (52 bytes): a responder under a handshake flood (the relay, or
a node, whose cookie may come relayed) asks for proof of the source address before
any public-key work; drawn in cookie.py.
"""

from __future__ import annotations

import hashlib
import struct

from .errors import ProtocolError

# Specification constants.
INIT = 1
RESP = 2
DATA = 3
RELAYED = 4
HINT = 5
COOKIE = 6

SUITE_AESGCM = 1
SUITE_CHACHAPOLY = 2
SUITES = (SUITE_AESGCM, SUITE_CHACHAPOLY)

HINT_UNKNOWN_SESSION = 1  # no session with that index (the relay restarted)
HINT_UNKNOWN_ENDPOINT = 2  # a relayed message from an address with no session
HINT_NOT_MY_KEY = 3  # mac1 did not match: the sender holds another relay key

MAC_LEN = 16
TAG_LEN = 16
KEY_LEN = 32
INDEX_LEN = 4
DATA_HEADER_LEN = 16
RELAYED_HEADER_LEN = 8
HINT_LEN = 8
COOKIE_REPLY_LEN = 4 + 4 + 12 + 16 + TAG_LEN  # cookie.py
INIT_FIXED = 8 + 32 + 48 + TAG_LEN + 2 * MAC_LEN  # 136: INIT with an empty payload
RESP_FIXED = 12 + 32 + TAG_LEN + 2 * MAC_LEN  # 92: RESP with an empty payload
MAX_HANDSHAKE = 1280  # a handshake never needs IP fragmentation

PROBE_REQUEST = 0x01
PROBE_REPLY = 0x02
PROBE_LEN = 9
# Inside one node only (never on the wire): 0x03 + csum_start (2) + csum_offset (2) + an IPv4
# packet, a packet whose partial checksum lies deeper than its own header (offload.py).
PARTIAL = 0x03
PARTIAL_HEADER_LEN = 5

# Tunnel overhead per inner packet, for the MTU: IP + UDP + relayed + data header + tag.
UDP_OVERHEAD_IPV4 = 20 + 8
TUNNEL_OVERHEAD = RELAYED_HEADER_LEN + DATA_HEADER_LEN + TAG_LEN
# The smallest overlay MTU (IPv4's minimum datagram), and so the smallest underlay a node may report.
MIN_OVERLAY_MTU = 576
MIN_UNDERLAY_MTU = MIN_OVERLAY_MTU + UDP_OVERHEAD_IPV4 + TUNNEL_OVERHEAD

_HINT = struct.Struct("!BBxx4s")

_MAC1_LABEL = b"mac1----"


def mac1_key(responder_public: bytes) -> bytes:
    """The key of mac1: anyone who knows the responder's public key can compute it."""
    return hashlib.blake2s(_MAC1_LABEL + responder_public).digest()


def mac1(key: bytes, body: bytes) -> bytes:
    return hashlib.blake2s(body, key=key, digest_size=MAC_LEN).digest()


def build_init(suite: int, sender: bytes, noise: bytes, mac1_key_: bytes) -> bytes:
    body = bytes((INIT, suite, 0, 0)) + sender + noise
    return body + mac1(mac1_key_, body) + bytes(MAC_LEN)


def build_resp(suite: int, sender: bytes, receiver: bytes, noise: bytes, mac1_key_: bytes) -> bytes:
    body = bytes((RESP, suite, 0, 0)) + sender + receiver + noise
    return body + mac1(mac1_key_, body) + bytes(MAC_LEN)


def mac1_valid(msg: bytes, key: bytes) -> bool:
    """Cheap check before any public-key work: was this handshake meant for key's owner?"""
    end = len(msg) - 2 * MAC_LEN
    return end > 0 and mac1(key, msg[:end]) == msg[end : end + MAC_LEN]


def parse_init(msg: bytes) -> tuple[int, bytes, bytes]:
    """(suite, sender index, Noise message) of an INIT, or ProtocolError."""
    if len(msg) < INIT_FIXED or len(msg) > MAX_HANDSHAKE:
        raise ProtocolError("handshake initiation of bad length")
    if msg[0] != INIT:
        raise ProtocolError("not a handshake initiation")
    if msg[1] not in SUITES:
        raise ProtocolError("unknown cipher suite")
    return msg[1], bytes(msg[4:8]), bytes(msg[8 : len(msg) - 2 * MAC_LEN])


def parse_resp(msg: bytes) -> tuple[int, bytes, bytes, bytes]:
    """(suite, sender index, receiver index, Noise message) of a RESP, or ProtocolError."""
    if len(msg) < RESP_FIXED or len(msg) > MAX_HANDSHAKE:
        raise ProtocolError("handshake response of bad length")
    if msg[0] != RESP:
        raise ProtocolError("not a handshake response")
    if msg[1] not in SUITES:
        raise ProtocolError("unknown cipher suite")
    return msg[1], bytes(msg[4:8]), bytes(msg[8:12]), bytes(msg[12 : len(msg) - 2 * MAC_LEN])


def build_hint(reason: int, index: bytes = bytes(4)) -> bytes:
    return _HINT.pack(HINT, reason, index)


def parse_hint(msg: bytes) -> tuple[int, bytes]:
    if len(msg) != HINT_LEN or msg[0] != HINT:
        raise ProtocolError("malformed hint")
    _, reason, index = _HINT.unpack(msg)
    return reason, index


def relayed_header(address: bytes) -> bytes:
    return bytes((RELAYED, 0, 0, 0)) + address
