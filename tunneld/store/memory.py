"""In-memory Store: the twin of sqlite.py for unit and simulation tests."""

from __future__ import annotations

import dataclasses

from .base import Conflict, NodeRecord, TokenRecord


class MemoryStore:
    def __init__(self):
        self._meta: dict[str, str] = {}
        self._nodes: dict[str, NodeRecord] = {}
        self._revoked: set[bytes] = set()
        self._tokens: dict[bytes, TokenRecord] = {}

    def get_meta(self, key):
        return self._meta.get(key)

    def set_meta(self, key, value):
        self._meta[key] = value

    def node_by_key(self, key):
        for rec in self._nodes.values():
            if rec.public_key == key:
                return dataclasses.replace(rec)
        return None

    def node_by_name(self, name):
        rec = self._nodes.get(name)
        return dataclasses.replace(rec) if rec else None

    def nodes(self):
        return [dataclasses.replace(r) for r in sorted(self._nodes.values(), key=lambda r: r.name)]

    def register(self, name, key, allocate, now):
        if self.node_by_key(key) is not None:
            raise Conflict("key already registered")
        rec = self._nodes.get(name)
        if rec is not None:
            if rec.public_key is not None:
                raise Conflict(f"name {name!r} is taken")
            rec.public_key = key
            return dataclasses.replace(rec)
        address = allocate({r.address for r in self._nodes.values()})
        if address is None:
            return None
        rec = NodeRecord(name, address, key, now)
        self._nodes[name] = rec
        return dataclasses.replace(rec)

    def set_mtu(self, name, mtu):
        if name in self._nodes:
            self._nodes[name].mtu = mtu

    def touch(self, seen):
        for name, when in seen.items():
            if name in self._nodes:
                self._nodes[name].last_seen = when

    def revoke_node(self, name, now):
        rec = self._nodes.get(name)
        if rec is None or rec.public_key is None:
            return False
        self._revoked.add(rec.public_key)
        rec.public_key = None
        return True

    def key_revoked(self, key):
        return key in self._revoked

    def add_token(self, token):
        self._tokens[token.token_id] = dataclasses.replace(token)

    def token(self, token_id):
        t = self._tokens.get(token_id)
        return dataclasses.replace(t) if t else None

    def tokens(self):
        return [dataclasses.replace(t) for t in sorted(self._tokens.values(), key=lambda t: t.created)]

    def revoke_token(self, token_id):
        t = self._tokens.get(token_id)
        if t is None or t.revoked:
            return False
        t.revoked = True
        return True

    def use_token(self, token_id):
        if token_id in self._tokens:
            self._tokens[token_id].uses += 1

    def close(self):
        pass
