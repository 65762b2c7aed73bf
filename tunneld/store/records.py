"""The relay's records as JSON text: how a store shared by several relays (etcd.py) holds
them, and how the relay engine reads what the store's watch brings (engine/cluster.py).
Pure: no I/O.
"""

from __future__ import annotations

import json

from .base import NodeRecord, TokenRecord


def _dumps(value) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def node_value(r: NodeRecord) -> str:
    return _dumps({"address": r.address, "key": r.public_key.hex() if r.public_key else None,
                   "created": r.created, "lock": r.lock.hex() if r.lock else None})


def token_value(t: TokenRecord) -> str:
    return _dumps({"hash": t.secret_hash.hex(), "created": t.created, "expires": t.expires,
                   "revoked": t.revoked, "uses": t.uses, "max_uses": t.max_uses})


def parse_node(name: str, raw: bytes) -> NodeRecord:
    v = json.loads(raw)
    return NodeRecord(name, v["address"], bytes.fromhex(v["key"]) if v["key"] else None, v["created"],
                      lock=bytes.fromhex(v["lock"]) if v.get("lock") else None)


def parse_token(hex_id: str, raw: bytes) -> TokenRecord:
    v = json.loads(raw)
    return TokenRecord(bytes.fromhex(hex_id), bytes.fromhex(v["hash"]), v["created"], v["expires"],
                       v["revoked"], v["uses"], v["max_uses"])
