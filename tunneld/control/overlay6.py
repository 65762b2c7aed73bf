"""The IPv6 overlay: a network's prefix, and each node's address in it. Pure.

A network's IPv6 prefix is given (serve --network6 CIDR) or chosen once when the network
is made: a unique local /64 (RFC 4193: fd, a 40-bit random global ID, subnet 0), kept
with the network. A node's IPv6 address is its IPv4 overlay address carried in the
prefix's last 32 bits:

    100.64.0.7  in 100.64.0.0/10,  prefix fd3a:5e1c:92f0::/64
        ->  fd3a:5e1c:92f0::6440:7            (prefix + the IPv4 address as an integer)

so it is bound to the node's key exactly as the IPv4 address is (the registry keeps that
binding), unique, stable, and needs no state or wire field of its own; and the data path
finds a packet's peer from either address with one lookup (address4_of).

  new_prefix(random)            a fresh ULA /64
  parse_prefix(text)            --network6: a CIDR with room for 32 bits, checked
  address6(prefix, v4)          a node's IPv6 address
  address4_of(prefix, v6)       the IPv4 address an IPv6 overlay address carries, or None
  usable(value)                 a prefix a relay sent or node.json kept, as text, or None
"""

from __future__ import annotations

import ipaddress

from ..errors import ConfigError

MAX_PREFIX = 96  # the last 32 bits carry the IPv4 address


def new_prefix(random) -> ipaddress.IPv6Network:
    """A unique local /64: fd, then 40 random bits (random(5)), then subnet 0."""
    global_id = random(5)
    return ipaddress.IPv6Network((bytes([0xFD]) + global_id + bytes(10), 64))


def parse_prefix(text) -> ipaddress.IPv6Network:
    try:
        net = ipaddress.IPv6Network(str(text), strict=True)
    except ValueError as exc:
        raise ConfigError(f"--network6 {str(text)[:50]!r} is not an IPv6 CIDR ({exc}); "
                          "e.g. fd3a:5e1c:92f0::/64, or leave it out for one chosen at random") from None
    if net.prefixlen > MAX_PREFIX:
        raise ConfigError(f"--network6 {net} is too small: a node's address takes 32 bits, so give "
                          f"a prefix of /{MAX_PREFIX} or larger (a /64 is usual)")
    if net.is_multicast or net.is_loopback or net.is_link_local or net.network_address.ipv4_mapped \
            or net.overlaps(ipaddress.IPv6Network("::/96")):
        raise ConfigError(f"--network6 {net} is reserved; use a unique local prefix (fd00::/8) or one of yours")
    return net


def address6(prefix: ipaddress.IPv6Network, v4: str | ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    return prefix.network_address + int(ipaddress.IPv4Address(v4))


def address4_of(prefix: ipaddress.IPv6Network, v6: bytes | str | ipaddress.IPv6Address) -> bytes | None:
    """The 4 bytes of the IPv4 overlay address that v6 (16 bytes, or text) carries, or None
    when v6 lies outside the prefix or beyond its 32 bits."""
    raw = v6 if isinstance(v6, bytes) else ipaddress.IPv6Address(v6).packed
    if len(raw) != 16:
        return None
    offset = int.from_bytes(raw, "big") - int(prefix.network_address)  # in the prefix: 0 .. 2^32 - 1
    return offset.to_bytes(4, "big") if 0 <= offset < 2 ** 32 else None


def usable(value) -> str | None:
    """value as a prefix a node can take (what a relay said, what node.json kept), or None:
    a network without IPv6, or a prefix this node will not put on tunneld0."""
    try:
        return str(parse_prefix(value)) if isinstance(value, str) else None
    except ConfigError:
        return None
