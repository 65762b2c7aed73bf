"""Opening DATA on a KeyRing's sessions, and the control channel between a node and the
relay that rides on it: msgpack messages (proto/messages.py), one per DATA, sealed on
the current session. The node's relay link and the relay's members both use these.

  open_data(table, data, drops, owner)  the session a DATA names and its plaintext, if it
                                        authenticates (and belongs to owner, when given);
                                        else (session or None, None), the drop counted
  seal_control(ring, msg)               the DATA carrying msg, or None (no session, or spent)
  decode_control(plaintext, drops)      the message, its shape checked, or None, counted
"""

from __future__ import annotations

from ..drops import Drop
from ..proto import messages
from ..proto.errors import ProtocolError
from ..proto.session import Session
from .sessions import IndexTable, KeyRing


def open_data(table: IndexTable, data: bytes, drops, owner=None) -> tuple[Session | None, bytes | None]:
    s = table.sessions.get(data[4:8])
    if s is None or (owner is not None and s.owner is not owner):
        drops[Drop.UNKNOWN_SESSION] += 1
        return None, None
    plaintext = s.open(data)
    if plaintext is None:
        drops[s.last_drop] += 1
    return s, plaintext


def seal_control(ring: KeyRing, msg: dict) -> bytes | None:
    s = ring.current
    return None if s is None else s.seal(messages.encode(msg))


def decode_control(plaintext: bytes, drops) -> dict | None:
    try:
        return messages.decode_control(plaintext)
    except ProtocolError:
        drops[Drop.BAD_CONTROL] += 1
        return None
