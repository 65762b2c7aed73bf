"""What a node routes through the overlay, and the MTUs that fit, without I/O.

Routes. A node may route for others into prefixes it advertises (a gateway); a node
that accepts routes takes each peer's prefixes (those the operator approved on the
relay) into a longest-prefix table (one per family), and from then on also accepts packets from those
prefixes from that peer. Whatever the relay says, a prefix is refused and counted if
it overlaps what the host itself needs (`protected`: the relay's address, the host's
connected networks and its gateway), a prefix we advertise ourselves, or the addresses
that are never anyone's to route: 0.0.0.0/8, loopback, link-local, multicast, reserved.

MTU. tunneld0's MTU is the overlay MTU the relay computes (the smallest underlay of
any member, minus the tunnel's overhead), taken at the first join whatever it is, and
after that only ever lowered, so that the interface never grows under running pods.
Each peer's path MTU, and the MSS that SYNs towards it are clamped to (on tunneld0,
and inside flannel's VXLAN), follow from the underlays on the way.

Changes to the host leave as effects (effects.py): SetRoutes, SetMtu.
"""

from __future__ import annotations

import ipaddress
import logging

from ..control.registry import RESERVED
from ..logs import event
from ..drops import Drop
from ..proto import wire
from .effects import SetMtu, SetRoutes
from .mss import VXLAN_OVERHEAD

log = logging.getLogger("tunneld.node")

OVERHEAD = wire.UDP_OVERHEAD_IPV4 + wire.TUNNEL_OVERHEAD  # underlay MTU - overlay MTU
NEVER_ROUTED = tuple(ipaddress.IPv4Network(p) for p in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16",
                                                          "224.0.0.0/4", "240.0.0.0/4"))
NEVER_ROUTED6 = tuple(ipaddress.IPv6Network(p) for p in ("::/8", "fe80::/10", "ff00::/8"))
TCPIP_HEADERS = 40


class Routes:
    """The routes we accept from peers: a longest-prefix table, and what it installed."""

    def __init__(self, advertised: tuple[str, ...], accept: bool, protected: tuple[str, ...], effects: list,
                 drops):
        self.advertised = tuple(advertised)
        self.accept = accept
        nets = [ipaddress.ip_network(a, strict=False) for a in protected]
        self.protected = NEVER_ROUTED + tuple(n for n in nets if n.version == 4)
        self.protected6 = NEVER_ROUTED6 + tuple(n for n in nets if n.version == 6)
        self.effects = effects
        self.drops = drops
        self.table: list[tuple[int, int, object]] = []  # (network, mask, peer), longest first
        self.table6: list[tuple[int, int, object]] = []  # the same of IPv6 prefixes (128-bit integers)
        self.accepted: list[str] = []
        self.installed: tuple[str, ...] | None = None

    def update(self, peers) -> None:
        """Rebuild the table from the peers' advertised prefixes; SetRoutes if what goes
        through tunneld0 changed."""
        if self.accept:
            self._accept(peers)
        self.install(peers)

    def set_accept(self, accept: bool, peers) -> None:
        """Accepting peers' prefixes turned on or off (a reload): the table rebuilt or emptied."""
        self.accept = accept
        if not accept:
            self.table, self.table6, self.accepted = [], [], []
            for peer in peers:
                peer.sources = peer.sources6 = ()
        self.update(peers)

    def install(self, peers, again: bool = False) -> None:
        """What goes through tunneld0: each peer's own address, and the accepted prefixes;
        never the overlay's whole range, which may hold the host's own services (clouds put
        DNS and metadata in 100.64.0.0/10)."""
        want = tuple(sorted(set(self.accepted) | {f"{p.address}/32" for p in peers}))
        if again or want != self.installed:
            self.installed = want
            self.effects.append(SetRoutes(want))

    def _accept(self, peers) -> None:
        own = [ipaddress.ip_network(r) for r in self.advertised]
        tables: dict[int, list] = {4: [], 6: []}
        for peer in peers:
            sources: dict[int, list] = {4: [], 6: []}
            for text in peer.routes:
                try:
                    prefix = ipaddress.ip_network(text)
                except ValueError:
                    prefix = None
                protected = self.protected6 if prefix is not None and prefix.version == 6 else self.protected
                if prefix is None or any(overlaps(prefix, p) for p in (*protected, *own)):
                    self.drops[Drop.ROUTE_REFUSED] += 1
                    continue  # it would capture what the host needs, or loop with our own
                entry = (int(prefix.network_address), int(prefix.netmask))
                sources[prefix.version].append(entry)
                tables[prefix.version].append((prefix.prefixlen, peer.name, *entry, peer))
            peer.sources, peer.sources6 = tuple(sources[4]), tuple(sources[6])
        for table in tables.values():
            table.sort(key=lambda t: (-t[0], t[1]))  # longest prefix first; ties go to the lower name
        self.table = [(net, mask, peer) for _, _, net, mask, peer in tables[4]]
        self.table6 = [(net, mask, peer) for _, _, net, mask, peer in tables[6]]
        self.accepted = sorted({prefix_text(net, mask) for net, mask, _ in self.table}) + sorted(
            {prefix_text(net, mask, 6) for net, mask, _ in self.table6})


def overlay_conflict(net, relays, host_claims) -> tuple[str, str] | None:
    """Why this host cannot take an address in the overlay network net: (code, message), or
    None. The relay's address inside it, or a network of the host's (address, route,
    resolver: host_claims, (what, prefix) pairs) overlapping it, short of the ranges the
    registry never hands out."""
    for a in relays:
        if ipaddress.ip_address(a).version == net.version and ipaddress.ip_address(a) in net:
            return "relay_in_overlay", (f"the relay's address {a} lies inside the overlay network {net}; "
                                        "give the relay an address outside it")
    for what, prefix in host_claims:
        try:
            claim = ipaddress.ip_network(prefix)
        except ValueError:  # a resolver with a scope (fe80::1%eth0): link-local, never an overlay's
            continue
        if claim.version != net.version:
            continue
        if claim.overlaps(net) and not any(claim.version == 4 and claim.subnet_of(r) for r in RESERVED):
            option = "--network6" if net.version == 6 else "--network"
            return "overlay_overlaps_host", (f"the overlay network {net} overlaps {what} on this host; run the relay "
                                             f"with another {option}, clear of this host's addresses, routes and "
                                             "resolvers")
    return None


class OutsideOverlay:
    """A direct endpoint may not lie inside the overlay (IPv4 or IPv6): that would tunnel
    the tunnel. known caches the answer per endpoint (the hot path's test)."""

    __slots__ = ("overlay", "overlay6", "known")
    LIMIT = 1024

    def __init__(self, network: ipaddress.IPv4Network | None = None):
        self.overlay: tuple[int, int] | None = None  # (network, mask)
        self.overlay6: tuple[int, int] | None = None  # the same of the IPv6 prefix
        self.known: dict[tuple, bool] = {}
        if network is not None:
            self.set(network)

    def set(self, network: ipaddress.IPv4Network, network6: ipaddress.IPv6Network | None = None) -> None:
        self.overlay = (int(network.network_address), int(network.netmask))
        self.overlay6 = (int(network6.network_address), int(network6.netmask)) if network6 else None
        self.known.clear()

    def allows(self, ep: tuple) -> bool:
        ok = self.known.get(ep)
        return self.check(ep) if ok is None else ok

    def check(self, ep: tuple) -> bool:
        try:
            ip = ipaddress.ip_address(ep[0])
        except (ValueError, TypeError, IndexError):
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        inside = self.overlay6 if ip.version == 6 else self.overlay
        ok = inside is None or int(ip) & inside[1] != inside[0]
        if len(self.known) > self.LIMIT:
            self.known.clear()
        self.known[ep] = ok
        return ok


def prefix_text(network: int, mask: int, version: int = 4) -> str:
    """A (network, mask) of the tables above as a CIDR."""
    return f"{ipaddress.ip_address(network) if version == 4 else ipaddress.IPv6Address(network)}/{bin(mask).count('1')}"


def overlaps(a, b) -> bool:
    """Prefixes that share addresses (never across families: ipaddress does not check)."""
    return a.version == b.version and a.overlaps(b)


def longest(table: list, dst: bytes):
    """The peer of table's first (network, mask, peer) that holds dst (the table is sorted
    longest prefix first); None if none."""
    n = int.from_bytes(dst, "big")
    for network, mask, peer in table:
        if n & mask == network:
            return peer
    return None


def within(address: bytes, prefixes) -> bool:
    n = int.from_bytes(address, "big")
    return any(n & mask == network for network, mask in prefixes)


class Mtu:
    """tunneld0's MTU, the overlay's, and each peer's path MTU and clamp limits."""

    def __init__(self, underlay: int, cached: int | None, effects: list):
        self.underlay = underlay  # our own path to the relay
        self.interface = cached or underlay - OVERHEAD  # tunneld0's
        self.network = 0  # the overlay MTU, as the relay last said
        self.relay = 0  # the relay's own underlay
        self.settled = False  # after the first join, the interface MTU only ever goes down
        self.effects = effects

    def adopt(self, network_mtu: int) -> bool:
        """Take the overlay MTU: any value at the first join, then only ever a lower one (a
        smaller node joined). True (and SetMtu) if the interface MTU changed."""
        self.network = network_mtu
        target = min(self.underlay - OVERHEAD, network_mtu or self.interface)
        changed = target != self.interface and (target < self.interface or not self.settled)
        if changed:
            if self.settled:
                log.warning("the overlay MTU fell to %d (a node with a smaller path joined): lowering "
                            "the interface from %d; restart flannel on this node so that pods follow",
                            target, self.interface, extra=event("mtu", mtu=target, was=self.interface))
            self.interface = target
            self.effects.append(SetMtu(target))
        self.settled = True
        return changed

    def fit(self, peers) -> None:
        """Each peer's path MTU, and the MSS that fits it, from the underlays on the way."""
        own = self.underlay
        relay = self.relay or own
        for peer in peers:
            peer.path_mtu = min(own, relay, peer.underlay_mtu or own) - OVERHEAD
            peer.direct_mtu = min(own, peer.underlay_mtu or own) - OVERHEAD + wire.RELAYED_HEADER_LEN
            limit = min(peer.path_mtu, self.interface)
            peer.mss = limit - TCPIP_HEADERS
            peer.vxlan_mss = limit - VXLAN_OVERHEAD - TCPIP_HEADERS
