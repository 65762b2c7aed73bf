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

Net = ipaddress.IPv4Network


class ApprovalError(ValueError):
    """An approval the relay refuses; the message names why."""


def _net(text: str, what: str = "the prefix") -> Net:
    try:
        return Net(text, strict=True)
    except ValueError:
        raise ApprovalError(f"{what} {text[:24]!r} is not an IPv4 prefix like 198.18.0.0/16") from None


class Approvals:
    def __init__(self, approved: dict[str, tuple[str, ...]] | None = None, auto: Iterable[str] = ()):
        self.approved: dict[str, tuple[Net, ...]] = {n: tuple(Net(p) for p in ps) for n, ps in (approved or {}).items()}
        self.auto = tuple(_net(p, "auto-approve-routes") for p in auto)

    def effective(self, name: str, advertised: Iterable[str]) -> tuple[str, ...]:
        """Those of a node's advertised prefixes that take effect."""
        own = self.approved.get(name, ())
        others = [p for n, ps in self.approved.items() if n != name for p in ps]
        out = []
        for text in advertised:
            prefix = Net(text)
            if any(prefix.subnet_of(a) for a in own) or (
                    any(prefix.subnet_of(a) for a in self.auto) and not any(prefix.overlaps(o) for o in others)):
                out.append(text)
        return tuple(out)

    def approve(self, name: str, text: str, overlay: Net, relay_addresses: Iterable[str]) -> SaveRoutes:
        prefix = _net(text)
        if prefix.prefixlen == 0:
            raise ApprovalError("the default route 0.0.0.0/0 cannot be approved")
        if prefix.overlaps(overlay):
            raise ApprovalError(f"{prefix} overlaps the overlay network {overlay}")
        for a in relay_addresses:
            if ipaddress.IPv4Address(a) in prefix:
                raise ApprovalError(f"{prefix} holds the relay's address {a}: nodes would lose their way to it")
        for other, prefixes in sorted(self.approved.items()):
            clash = next((p for p in prefixes if p.overlaps(prefix)), None)
            if other != name and clash is not None:
                raise ApprovalError(f"{prefix} overlaps {clash}, approved for {other}; "
                                    f"run 'tunneld routes unapprove {other} {clash}' first")
        mine = self.approved.get(name, ())
        if prefix in mine:
            return SaveRoutes(name, tuple(str(p) for p in mine))
        self.approved[name] = tuple(sorted((*mine, prefix)))
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
        prefixes = tuple(sorted(Net(t) for t in texts))
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
