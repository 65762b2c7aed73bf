"""What crosses an engine's boundary besides messages.

In: an Env, the time and randomness an engine may not take for itself. The daemons
pass the real clocks and os.urandom; a simulation passes its own clock and a seeded
generator, so that a run can be replayed exactly.

Out, from a node: the Transmit it is given takes packets at once (the socket, the TUN
device; never blocking); every change to the host is an effect, appended to the
node's `effects` in order, for the daemon to carry out off the receive path. (The
relay's effects are the writes of its store: store/base.py.)

  SetAddress(interface, mtu)   tunneld0 gets the overlay address, its MTU, and goes up
  SetMtu(mtu)                  tunneld0's MTU changes (only ever down, once running)
  SetRoutes(prefixes)          exactly these prefixes route through tunneld0
  SetGateway(network, prefixes) forward and masquerade overlay traffic into prefixes
                               (none: this node is no gateway; remove what a run left)
  SaveState(relay_key, assignment, mtu)  node.json: who the relay made us, for a restart
  Stop(exit_code, code, message)  end the daemon: refused by the relay, or misconfigured
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Protocol

from ..control.overlay6 import address6


@dataclass(frozen=True)
class Env:
    monotonic: Callable[[], float]  # read when a probe leaves and when it returns: round trips
    wall_ns: Callable[[], int]  # handshake timestamps, token expiry, last-seen times
    random: Callable[[int], bytes]  # indexes, ephemeral keys, cookie secrets, jitter

    def uniform(self) -> float:
        """A float in [0, 1) from the random source: jitter."""
        return int.from_bytes(self.random(4), "big") / 2**32

    def wall(self) -> float:
        return self.wall_ns() / 1e9


class Transmit(Protocol):
    def send(self, ep, data: bytes) -> None: ...
    def write_tun(self, packet: bytes) -> None: ...
    def relay_transport(self, tcp: bool) -> None: ...
    def relay_endpoint(self, address: str) -> None:
        """From now on RELAY means the relay at address ("host:port"): the link moved home."""


@dataclass(frozen=True)
class SetAddress:
    interface: ipaddress.IPv4Interface
    mtu: int
    interface6: ipaddress.IPv6Interface | None = None  # the IPv6 overlay address, where the network has one


@dataclass(frozen=True)
class SetMtu:
    mtu: int


@dataclass(frozen=True)
class SetRoutes:
    prefixes: tuple[str, ...]


@dataclass(frozen=True)
class SetGateway:
    network: str
    prefixes: tuple[str, ...]


@dataclass(frozen=True)
class Assignment:
    """Who the relay made a node: its name, overlay address and network."""
    name: str
    address: str
    network: str
    network6: str | None = None  # the IPv6 prefix (0.6 on; None from older relays)

    @property
    def interface_address(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.address}/{ipaddress.IPv4Network(self.network).prefixlen}")

    @property
    def address6(self) -> ipaddress.IPv6Interface | None:
        """The node's IPv6 overlay address, with the network's prefix length; or None."""
        if not self.network6:
            return None
        net = ipaddress.IPv6Network(self.network6)
        return ipaddress.IPv6Interface((address6(net, self.address), net.prefixlen))


@dataclass(frozen=True)
class SaveState:
    relay_key: bytes
    assignment: Assignment
    mtu: int
    lock: bytes | None = None  # the network lock we pinned
    known: tuple = ()  # ((peer name, key), ...) as last accepted


@dataclass(frozen=True)
class Stop:
    exit_code: int
    code: str
    message: str
