"""Which advertised routes take effect: the operator's approvals, without I/O.

A node may advertise prefixes it routes for others (a gateway), but what it advertises
reaches other nodes only once the operator approved it on the relay:

  tunneld routes approve NAME PREFIX    an approval (or a config `auto-approve-routes`
                                        list: any advertised prefix inside one of them)
  tunneld routes list                   advertised and approved, per node

An advertised prefix takes effect if it lies inside one of that node's approvals, or
inside an auto-approve prefix and clear of every other node's approvals. An approval
is refused if it overlaps another node's approval (two gateways for one prefix is a
decision the operator makes by removing one first), the overlay, or the relay's own
addresses; and a node name's approvals go with its key when it is revoked.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from ..store.base import SaveRoutes

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _order(p: Net) -> tuple:
    return p.version, p  # IPv4 and IPv6 prefixes do not compare: each family apart


def overlaps(a: Net, b: Net) -> bool:
    """a and b share addresses (never across families; ipaddress does not check that)."""
    return a.version == b.version and a.overlaps(b)


def within(a: Net, b: Net) -> bool:
    return a.version == b.version and a.subnet_of(b)


class ApprovalError(ValueError):
    """An approval the relay refuses; the message names why."""


def _net(text: str, what: str = "the prefix") -> Net:
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise ApprovalError(f"{what} {text[:40]!r} is not a prefix like 198.18.0.0/16 or 2001:db8:70::/64") from None


class Approvals:
    def __init__(self, approved: dict[str, tuple[str, ...]] | None = None, auto: Iterable[str] = ()):
        self.approved: dict[str, tuple[Net, ...]] = {n: tuple(ipaddress.ip_network(p) for p in ps)
                                                     for n, ps in (approved or {}).items()}
        self.auto = tuple(_net(p, "auto-approve-routes") for p in auto)

    def effective(self, name: str, advertised: Iterable[str]) -> tuple[str, ...]:
        """Those of a node's advertised prefixes that take effect."""
        own = self.approved.get(name, ())
        others = [p for n, ps in self.approved.items() if n != name for p in ps]
        out = []
        for text in advertised:
            prefix = ipaddress.ip_network(text)
            if any(within(prefix, a) for a in own) or (
                    any(within(prefix, a) for a in self.auto) and not any(overlaps(prefix, o) for o in others)):
                out.append(text)
        return tuple(out)

    def approve(self, name: str, text: str, overlay: Net, relay_addresses: Iterable[str],
                overlay6: Net | None = None) -> SaveRoutes:
        prefix = _net(text)
        if prefix.prefixlen == 0:
            raise ApprovalError(f"the default route {prefix} cannot be approved")
        for net in (overlay, overlay6):
            if net is not None and overlaps(prefix, net):
                raise ApprovalError(f"{prefix} overlaps the overlay network {net}")
        for a in relay_addresses:
            if ipaddress.ip_address(a).version == prefix.version and ipaddress.ip_address(a) in prefix:
                raise ApprovalError(f"{prefix} holds the relay's address {a}: nodes would lose their way to it")
        for other, prefixes in sorted(self.approved.items()):
            clash = next((p for p in prefixes if overlaps(p, prefix)), None)
            if other != name and clash is not None:
                raise ApprovalError(f"{prefix} overlaps {clash}, approved for {other}; "
                                    f"run 'tunneld routes unapprove {other} {clash}' first")
        mine = self.approved.get(name, ())
        if prefix in mine:
            return SaveRoutes(name, tuple(str(p) for p in mine))
        self.approved[name] = tuple(sorted((*mine, prefix), key=_order))
        return SaveRoutes(name, tuple(str(p) for p in self.approved[name]))

    def unapprove(self, name: str, text: str) -> SaveRoutes | None:
        prefix = _net(text)
        mine = self.approved.get(name, ())
        if prefix not in mine:
            return None
        rest = tuple(p for p in mine if p != prefix)
        if rest:
            self.approved[name] = rest
        else:
            del self.approved[name]
        return SaveRoutes(name, tuple(str(p) for p in rest))

    def replace(self, name: str, texts: Iterable[str]) -> None:
        """What another relay of the network approved for name (all of it)."""
        prefixes = tuple(sorted((ipaddress.ip_network(t) for t in texts), key=_order))
        if prefixes:
            self.approved[name] = prefixes
        else:
            self.approved.pop(name, None)

    def forget(self, name: str) -> None:
        """A revoked name: its next key is approved anew (the store drops them with the key)."""
        self.approved.pop(name, None)

    def rows(self, advertised: dict[str, tuple[str, ...]]) -> list[dict]:
        """What `tunneld routes list` shows: per node, advertised, approved, in effect."""
        names = sorted(set(advertised) | set(self.approved))
        return [{"name": n, "advertised": list(advertised.get(n, ())),
                 "approved": [str(p) for p in self.approved.get(n, ())],
                 "effective": list(self.effective(n, advertised.get(n, ())))} for n in names]
