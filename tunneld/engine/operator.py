"""What the operator asks of a running relay (through the control socket, net/relayd.py):
revocations, tokens and route approvals. Part of the relay engine (engine/relay.py), on
its state; each change becomes a store write like any other.
"""

from __future__ import annotations

import ipaddress
import logging

from ..logs import event
from ..proto import endpoint


log = logging.getLogger("tunneld.relay")


class OperatorCommands:
    """Mixed into Relay: self is the relay engine."""

    def revoke(self, name: str) -> bool:
        """Refuse this node's key from now on and drop its sessions; peers forget it."""
        record, write = self.registry.revoke(name, self.env.wall())
        if record is None:
            return False
        self.writes.append(write)
        self.revoked_elsewhere(record)
        return True

    def revoked_elsewhere(self, record) -> None:
        """What a revocation does to the running relay, wherever it was decided."""
        name = record.name
        self.joins.drop(record.public_key)
        m = self.members.pop(record.public_key, None)
        if m is not None:
            self._control(m, {"t": "revoked"})  # it stops at once, not at its next contact
            self.forget(m)
        self.directory.remove(ipaddress.IPv4Address(record.address).packed)
        self._mtus.pop(name, None)
        if self.cluster is not None:
            self.cluster.let_go(record)
        log.info("revoked %s (%s)", name, record.address, extra=event("revoked", node=name, address=record.address))

    def issue_token(self, ttl: float | None, uses: int = 1) -> str:
        token, write = self.registry.issue_token(self.identity.public, ttl, self.env.wall(), self.env.random, uses)
        self.writes.append(write)
        return token.encode()

    def approve_route(self, name: str, prefix: str) -> None:
        """ApprovalError if the relay refuses it (control/approvals.py)."""
        ep = endpoint.parse(self.listen)  # (none for 0.0.0.0: the relay's address is not known here)
        write = self.registry.approve_route(name, prefix, [ep[0]] if ep else [])
        self.writes.append(write)
        self.approvals_changed()

    def unapprove_route(self, name: str, prefix: str) -> bool:
        write = self.registry.approvals.unapprove(name, prefix)
        if write is None:
            return False
        self.writes.append(write)
        self.approvals_changed()
        return True

    def approvals_changed(self) -> None:
        for m in self.members.values():  # auto-approvals of others may follow from any change
            approved = self.registry.approvals.effective(m.name, m.routes)
            if approved != m.approved:
                m.approved = approved
                self.directory.set(m.entry())

    def route_rows(self) -> list[dict]:
        advertised = {m.name: m.routes for m in self.members.values() if m.routes}
        return self.registry.approvals.rows(advertised)

    def token_rows(self) -> list[dict]:
        return self.registry.token_rows()

    def revoke_token(self, token_id: bytes) -> bool:
        write = self.registry.revoke_token(token_id)
        if write is None:
            return False
        self.writes.append(write)
        return True
