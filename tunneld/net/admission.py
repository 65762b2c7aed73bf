"""A node's policy at work: policy.py writes its rules, host/firewall.py hands them to the
kernel, and this keeps track of what the kernel holds. The node daemon asks for a policy
whenever its peers or its config change (want); the change is carried out on the host
thread (apply), in order with the engine's; status reads the counters back.

The table is rewritten whole whenever a peer comes or goes, which zeroes nftables'
counters: what the tables before counted is carried over (base), so the counts status and
metrics show only ever grow while the daemon runs, and start again only for new rules.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .. import policy as rules
from ..control.overlay6 import address6
from ..engine.routes import prefix_text
from ..host import firewall


@dataclass(frozen=True)
class Enforce:
    """The daemon's own host change, beside the engine's: this policy for these peers."""
    policy: object
    peers: dict


def peers_of(engine) -> dict:
    """The engine's peers by name, each with the sources it may send from (policy.py)."""
    a = engine.assignment
    prefix6 = ipaddress.IPv6Network(a.network6) if a is not None and a.network6 else None
    return {p.name: (f"{p.address}/32", *((f"{address6(prefix6, p.address)}/128",) if prefix6 else ()),
                     *(prefix_text(net, mask) for net, mask in p.sources))
            for p in engine.peers.values()}


class Admission:
    def __init__(self, ifname: str):
        self.ifname = ifname
        self.enforced = None  # the policy the kernel holds now
        self.wanted = None  # the policy last sent to the host thread, and the peers it was for
        self.peers: dict | None = None
        self.base: dict = {}

    def start(self, policy) -> None:
        """Before tunneld0 carries anything: the policy, or no table left by an earlier run."""
        firewall.enforce(policy, {}, self.ifname)
        self.enforced = self.wanted = policy
        self.peers = {}

    def want(self, policy, peers: dict) -> Enforce | None:
        """The change to carry out for this policy and these peers; None if there is none."""
        if policy is self.wanted and peers == self.peers:
            return None
        self.wanted, self.peers = policy, peers
        return Enforce(policy, peers)

    def apply(self, effect: Enforce) -> str:
        """On the host thread: write the table; what changed, for the log ("" for peers only)."""
        was = self.enforced
        before = rules.totals(firewall.listing()) if was is not None else {}
        firewall.enforce(effect.policy, effect.peers, self.ifname)
        if effect.policy is not was:  # new rules count from zero; what was denied stays counted
            before = {k: v for k, v in rules.add(self.base, before).items() if k == "denied"}
            self.base = {}
        self.base = rules.add(self.base, before)
        self.enforced = effect.policy
        if effect.policy is was:
            return ""
        if effect.policy is None:
            return f"no policy: {self.ifname} admits everything from peers"
        return f"policy {effect.policy.source}: {len(effect.policy.rules)} rules, the rest denied"

    def stop(self) -> None:
        """The daemon stops: nothing comes through tunneld0 while it is down, so no table."""
        if self.enforced is not None:
            firewall.enforce(None, {}, self.ifname)
            self.enforced = None

    def status(self, peers: dict) -> dict | None:
        if self.enforced is None:
            return None
        return rules.counters(firewall.listing(), self.enforced, peers, self.base)
