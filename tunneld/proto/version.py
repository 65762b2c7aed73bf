"""Which protocol a daemon speaks, and what it can do beyond it.

Clusters upgrade node by node, so for a while old and new daemons talk to each other.
Since protocol 2 (tunneld 0.2.0) every handshake payload, node <-> relay and node <->
node, carries a hello (messages.py draws where):

  {"pv": int,       the newest protocol version the sender speaks
   "pm": int,       the oldest it still speaks
   "caps": [str]}   what it can do beyond the baseline of the protocol it speaks

Protocol 1 (tunneld 0.1.0) sent no hello: a payload without one means pv = pm = 1 and
no capabilities. Two sides talk when their ranges meet, and each uses a capability
only when both announced it. A side whose range does not meet ours is refused with a
reason that says which side to upgrade, never dropped in silence.

Capabilities:
  "hello"     takes a node <-> node INIT whose payload carries a hello after its
              timestamp (a 0.1.0 node drops such an INIT: it wants the timestamp alone)
  "ep-proof"  (0.3.0) a node that echoes a pong's proof (messages.py): the relay moves
              its endpoint only after that round trip from the new address
  "lanes"     (0.4.0) a node that reads DATA counters in lanes (proto/session.py): its
              peers' workers may each seal in a lane of their own
  "publish"   (0.5.0) a node that serves the ports a relay publishes (messages.py: pub,
              open, shut, udp); a relay sends these to no other node
  "ipv6"      (0.6.0) a node with an IPv6 overlay address, which takes IPv6 packets from
              its peers (engine/ipv6.py); status shows a peer's IPv6 address only then
"""

from __future__ import annotations

from dataclasses import dataclass

PROTOCOL = 2
MIN_PROTOCOL = 1
CAPABILITIES: tuple[str, ...] = ("hello", "ep-proof", "lanes", "publish", "ipv6")

MAX_CAPS = 16
MAX_CAP_LEN = 32


@dataclass(frozen=True)
class Hello:
    newest: int = 1
    oldest: int = 1
    caps: frozenset = frozenset()

    def has(self, cap: str) -> bool:
        return cap in self.caps

    def wire(self) -> dict:
        return {"pv": self.newest, "pm": self.oldest, "caps": sorted(self.caps)}

    def problem(self, us: str = "this tunneld", them: str = "it") -> str | None:
        """Why we cannot talk to a side that says this, in words that name which side to
        upgrade; or None."""
        ours = f"{MIN_PROTOCOL}..{PROTOCOL}"
        if self.oldest > PROTOCOL:
            return f"{them} speaks protocol {self}, newer than {us}'s {ours}: upgrade {us}"
        if self.newest < MIN_PROTOCOL:
            return f"{them} speaks protocol {self}, older than {us}'s {ours}: upgrade {them}"
        return None

    def __str__(self) -> str:
        return f"{self.oldest}..{self.newest}" if self.oldest != self.newest else str(self.newest)


OURS = Hello(PROTOCOL, MIN_PROTOCOL, frozenset(CAPABILITIES))
LEGACY = Hello()  # what a side that sends no hello speaks: protocol 1, tunneld 0.1.0
