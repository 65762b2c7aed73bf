"""Store in etcd, shared by every relay of one network (store/base.py's contract, plus
presence and the relays' own records, which only a shared store has).

Keys, under the network's prefix (default /tunneld/), values JSON:

  meta/<key>            network, public_key (the relay identity every relay shares)
  nodes/<name>          {"address", "key": hex|null, "created", "lock": hex|null}
  addr/<address>        name     (the index that makes two relays' allocations collide)
  keys/<hex key>        name     (likewise for keys)
  mtu/<name>, seen/<name>        written apart, so that they never race a registration
  revoked/<hex key>     {"name", "at"}
  tokens/<hex id>       {"hash", "created", "expires", "revoked", "uses", "max_uses"}  ("uses": unused)
  tokenuse/<hex id>/<slot>   name: one key per node the token admitted, its uses the count.
                        A token for N nodes has slots 1..N, each taken once; a token for
                        any number uses the node's name and key as its slot. So relays admitting
                        nodes with one token at the same moment contend only for one slot.
  routes/<name>         ["prefix", ...], the approved ones
  presence/<name>       {"relay", "ep", "mtu", "routes", "lan", "hello"}   on the home relay's lease
  relays/<id>           {"listen", "boot", "started"}                       on its own lease

A registration is one transaction: the name, its address and its key must still be
free (or, for a revoked name, still the name's), and the token's use slot too. Two relays that
pick the same address at the same moment: one transaction wins, the other node asks
again and gets the next address.
"""

from __future__ import annotations

import json
import logging
import secrets

from . import etcdgw
from .base import Conflict, NodeRecord, Snapshot, TokenRecord
from .records import _dumps, node_value, parse_node, parse_token, token_value
from .etcdgw import EtcdClient, absent, b64, delete, get, prefix_end, put, unb64, unchanged, value_is

log = logging.getLogger("tunneld.etcd")

DEFAULT_PREFIX = "/tunneld/"
LEASE_TTL = 10  # seconds: a dead relay's nodes are known to be elsewhere or gone within this
MAX_TXN_OPS = 120  # etcd's default limit is 128 operations per transaction


class EtcdStore:
    shared = True
    batch_limit = 24  # registrations per transaction: each takes up to 5 of etcd's 128 operations

    def __init__(self, client: EtcdClient, prefix: str = DEFAULT_PREFIX):
        if not prefix.endswith("/"):
            prefix += "/"
        self.client = client
        self.prefix = prefix.encode()
        self.revision = 0  # of the last load
        self.presence: dict[str, dict] = {}  # from the last load
        self.relays: dict[str, dict] = {}
        self.lease = 0

    def key(self, kind: str, name: str) -> bytes:
        return self.prefix + kind.encode() + b"/" + name.encode()

    def split(self, key: bytes) -> tuple[str, str]:
        kind, _, name = key[len(self.prefix):].decode(errors="replace").partition("/")
        return kind, name

    # -- the contract of store/base.py -----------------------------------------------------

    async def load(self) -> Snapshot:
        kvs, self.revision = await self.client.get_prefix(self.prefix)
        snap = Snapshot()
        mtus, seen, nodes, token_uses = {}, {}, {}, {}
        self.presence, self.relays = {}, {}
        for kv in kvs:
            kind, name = self.split(unb64(kv["key"]))
            raw = unb64(kv.get("value"))
            try:
                if kind == "meta":
                    snap.meta[name] = raw.decode()
                elif kind == "nodes":
                    nodes[name] = parse_node(name, raw)
                elif kind == "revoked":
                    snap.revoked_keys.add(bytes.fromhex(name))
                elif kind == "tokens":
                    snap.tokens.append(parse_token(name, raw))
                elif kind == "tokenuse":
                    token_uses[name.partition("/")[0]] = token_uses.get(name.partition("/")[0], 0) + 1
                elif kind == "routes":
                    snap.routes[name] = tuple(json.loads(raw))
                elif kind == "mtu":
                    mtus[name] = int(raw)
                elif kind == "seen":
                    seen[name] = float(raw)
                elif kind == "presence":
                    self.presence[name] = json.loads(raw)
                elif kind == "relays":
                    self.relays[name] = json.loads(raw)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("ignoring a damaged key %s in etcd: %s", kind + "/" + name, exc)
        for name, r in sorted(nodes.items()):
            r.mtu, r.last_seen = mtus.get(name), seen.get(name)
            snap.nodes.append(r)
        for t in snap.tokens:
            t.uses = token_uses.get(t.token_id.hex(), 0)
        snap.tokens.sort(key=lambda t: t.created)
        return snap

    async def register(self, record: NodeRecord, token_id: bytes | None) -> None:
        await self.register_many([(record, token_id)])

    async def register_many(self, items: list[tuple[NodeRecord, bytes | None]]) -> None:
        # Read what the transaction depends on, in one round trip.
        names = [r.name for r, _ in items]
        tokens = sorted({t for _, t in items if t is not None})
        reads = [get(self.key("nodes", n)) for n in names] + [get(self.key("tokens", t.hex())) for t in tokens]
        for t in tokens:
            p = self.key("tokenuse", t.hex() + "/")
            reads.append({"request_range": {"key": b64(p), "range_end": b64(prefix_end(p)), "keys_only": True}})
        _, out = await self.client.txn([], reads)
        responses = [r.get("response_range", {}).get("kvs") or [] for r in out.get("responses", [])]
        answers = [(kvs or [None])[0] for kvs in responses]
        held = dict(zip(names, answers[:len(names)]))
        token_kvs = dict(zip(tokens, answers[len(names):len(names) + len(tokens)]))
        slots_used = {t: {self.split(unb64(kv["key"]))[1].partition("/")[2] for kv in kvs}
                      for t, kvs in zip(tokens, responses[len(names) + len(tokens):])}
        compare, ops = [], []
        uses: dict[bytes, int] = {}
        for record, token_id in items:
            kv = held[record.name]
            nk = self.key("nodes", record.name)
            ak = self.key("addr", record.address)
            if kv is None:
                compare += [absent(nk), absent(ak)]
            else:  # a revoked name's next key: the name must still be waiting, at this address
                before = parse_node(record.name, unb64(kv.get("value")))
                if before.public_key is not None or before.address != record.address:
                    raise Conflict(f"name {record.name!r} is taken")
                compare += [unchanged(nk, int(kv["mod_revision"])), value_is(ak, record.name)]
            compare.append(absent(self.key("keys", record.public_key.hex())))
            ops += [put(nk, node_value(record)), put(ak, record.name),
                    put(self.key("keys", record.public_key.hex()), record.name)]
            if record.mtu:
                ops.append(put(self.key("mtu", record.name), str(record.mtu)))
            if token_id is not None:
                uses.setdefault(token_id, []).append((record.name, record.public_key))
        for token_id, takers in uses.items():
            kv = token_kvs.get(token_id)
            if kv is None:
                raise Conflict("the join token is not in the store")
            t = parse_token(token_id.hex(), unb64(kv.get("value")))
            used = slots_used[token_id]
            if t.max_uses:
                free = [str(n) for n in range(1, t.max_uses + 1) if str(n) not in used]
                if t.revoked or len(free) < len(takers):
                    raise Conflict("the join token was revoked or used up at another relay")
                slots = [free.pop(secrets.randbelow(len(free))) for _ in takers]  # apart from other relays'
            else:
                if t.revoked:
                    raise Conflict("the join token was revoked at another relay")
                slots = [f"n-{name}-{key.hex()[:16]}" for name, key in takers]
            for slot, (name, _) in zip(slots, takers):
                sk = self.key("tokenuse", f"{token_id.hex()}/{slot}")
                compare.append(absent(sk))
                ops.append(put(sk, name))
        ok, _ = await self.client.txn(compare, ops)
        if not ok:
            raise Conflict("a name, key or address was taken at another relay meanwhile")

    async def _rewrite(self, kind: str, name: str, parse, change, dump) -> None:
        """Read one record, change it and write it back, unless another write came between
        (then again, a few times); nothing if it is not there."""
        k = self.key(kind, name)
        for _ in range(5):
            kvs, _, _ = await self.client.range(k)
            if not kvs:
                return
            record = parse(name, unb64(kvs[0].get("value")))
            change(record)
            ok, _ = await self.client.txn([unchanged(k, int(kvs[0]["mod_revision"]))], [put(k, dump(record))])
            if ok:
                return
        raise Conflict(f"{kind}/{name[:64]} kept changing at other relays")

    async def _update_node(self, name: str, change) -> None:
        await self._rewrite("nodes", name, parse_node, change, node_value)

    async def set_mtu(self, name: str, mtu: int) -> None:
        await self.client.call("/v3/kv/put", put(self.key("mtu", name), str(mtu))["request_put"])

    async def set_lock(self, name: str, lock: bytes) -> None:
        def change(r: NodeRecord) -> None:
            r.lock = lock
        await self._update_node(name, change)

    async def set_routes(self, name: str, prefixes: tuple[str, ...]) -> None:
        k = self.key("routes", name)
        op = put(k, _dumps(list(prefixes))) if prefixes else delete(k)
        await self.client.txn([], [op])

    async def touch(self, seen: dict[str, float]) -> None:
        ops = [put(self.key("seen", name), repr(when)) for name, when in seen.items()]
        for i in range(0, len(ops), MAX_TXN_OPS):
            await self.client.txn([], ops[i:i + MAX_TXN_OPS])

    async def revoke_node(self, name: str, key: bytes, now: float) -> None:
        await self.client.txn([], [put(self.key("revoked", key.hex()), _dumps({"name": name, "at": now})),
                                   delete(self.key("keys", key.hex())), delete(self.key("routes", name))])

        def change(r: NodeRecord) -> None:
            if r.public_key == key:
                r.public_key = r.lock = None
        await self._update_node(name, change)

    async def add_token(self, token: TokenRecord) -> None:
        await self.client.txn([], [put(self.key("tokens", token.token_id.hex()), token_value(token))])

    async def revoke_token(self, token_id: bytes) -> None:
        def change(t: TokenRecord) -> None:
            t.revoked = True
        await self._rewrite("tokens", token_id.hex(), parse_token, change, token_value)

    async def set_meta(self, key: str, value: str) -> None:
        await self.client.txn([], [put(self.key("meta", key), value)])

    async def save_presence(self, changes: dict[str, dict | None]) -> None:
        """Where these nodes are homed now (on this relay, under its lease), or None: not here."""
        ops = [put(self.key("presence", name), _dumps(v), self.lease) if v is not None
               else delete(self.key("presence", name)) for name, v in changes.items()]
        for i in range(0, len(ops), MAX_TXN_OPS):
            await self.client.txn([], ops[i:i + MAX_TXN_OPS])

    async def close(self) -> None:
        await self.client.close()

    # -- what only a shared store does ---------------------------------------------------

    async def claim_meta(self, key: str, value: str) -> str:
        """Set meta/key to value unless it is set; the value it holds afterwards."""
        k = self.key("meta", key)
        ok, out = await self.client.txn([absent(k)], [put(k, value)], [get(k)])
        if ok:
            return value
        kvs = out["responses"][0]["response_range"].get("kvs") or [{}]
        return unb64(kvs[0].get("value")).decode()

    async def start_lease(self, ttl: int = LEASE_TTL) -> int:
        self.lease = await self.client.grant(ttl)
        return self.lease

    async def renew(self) -> bool:
        """Keep the lease alive; False if etcd forgot it (then start_lease and write presence again)."""
        return await self.client.keepalive(self.lease) > 0

    async def announce(self, relay_id: str, record: dict) -> None:
        await self.client.txn([], [put(self.key("relays", relay_id), _dumps(record), self.lease)])

    async def withdraw(self, relay_id: str) -> None:
        """Leaving on purpose: the relay's record and its nodes' presence go at once."""
        if self.lease:
            await self.client.revoke_lease(self.lease)

    async def changes(self, start: int):
        """(kind, name, value or None) for every change from revision start on; see etcdgw.watch."""
        async for events, revision in self.client.watch(self.prefix, start):
            self.revision = revision
            for ev in events:
                kind, name = self.split(unb64(ev["kv"]["key"]))
                value = None if ev.get("type") == "DELETE" else unb64(ev["kv"].get("value"))
                yield kind, name, value


def open_store(url: str, prefix: str = DEFAULT_PREFIX, ca: str | None = None, cert: str | None = None,
               key: str | None = None) -> EtcdStore:
    endpoints, tls = etcdgw.parse_url(url)
    return EtcdStore(EtcdClient(endpoints, tls=tls, ca=ca, cert=cert, key=key), prefix)
