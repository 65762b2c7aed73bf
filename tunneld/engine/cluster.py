"""Several relays, one network: the part of the relay engine (engine/relay.py) that only
runs when the store is shared (store/etcd.py). Without I/O, like the rest of the engine.

In:  remote(kind, name, value, now)  a change the store's watch reports (our own writes
                                     come back too, and change nothing)
     on_mesh(data, ep, now)          a mesh message from another relay (proto/mesh.py)
     forward(src, data, now)         a RELAYED datagram whose destination is not homed here
     control(addr, msg)              publishing's message for a node homed elsewhere
     tick(now)                       pings to the other relays; presence writes
Out: mesh messages, SavePresence writes, directory entries for nodes homed elsewhere.

Presence: a node is homed on the relay it last joined. That relay writes where it
sees the node (under its etcd lease) and every other relay shows the node in its
directory as online, with that endpoint, and forwards datagrams for it to its home,
one hop over the mesh. When a node moves, the new home's write makes the old home let
go; when a relay dies, its lease ends and its nodes' presence with it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import struct

from ..logs import event
from ..control.directory import Entry, hello_list
from ..drops import Drop
from ..proto import endpoint, mesh, messages, wire
from ..proto.version import Hello
from ..store.base import SavePresence
from ..store.records import parse_node, parse_token
from .channel import decode_control

log = logging.getLogger("tunneld.relay")

PING_EVERY = 1.0  # each other relay, for the health status shows
DOWN_AFTER = 3.5  # no pong for this long: status says the relay is down
_TIME = struct.Struct("!d")


class RelayInfo:
    __slots__ = ("id", "listen", "ep", "boot", "heard", "rtt")

    def __init__(self, relay_id: str, record: dict):
        self.id = relay_id
        self.listen = str(record.get("listen", relay_id))
        self.ep = endpoint.parse(self.listen)
        self.boot = bytes.fromhex(record.get("boot", ""))
        self.heard = float("-inf")
        self.rtt: float | None = None


class Cluster:
    def __init__(self, relay, relay_id: str, codec: mesh.Mesh, now: float):
        self.relay = relay
        self.id = relay_id
        self.mesh = codec
        self.relays: dict[str, RelayInfo] = {}  # the others, as etcd lists them
        self.by_boot: dict[bytes, RelayInfo] = {}
        self.homes: dict[bytes, str] = {}  # overlay address -> the relay it is homed on, if not us
        self.presence: dict[str, dict] = {}  # by name, as written by the other relays
        self.homed: set[str] = set()  # names whose presence we wrote as ours
        self.counts = relay.counts
        self._next_ping = now
        # Relays admitting nodes at the same moment would pick the same lowest free address and
        # all but one would lose the transaction: each starts its search somewhere else.
        span = relay.registry.network.num_addresses
        relay.registry.alloc_start = int.from_bytes(hashlib.blake2s(relay_id.encode()).digest()[:8], "big") \
            % max(1, span // 2) if span >= 1024 else 0

    # -- the store's watch ---------------------------------------------------------------

    def remote(self, kind: str, name: str, value: bytes | None, now: float) -> None:
        try:
            self._remote(kind, name, value, now)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            self.relay.drops[Drop.STORE_ERROR] += 1
            log.error("ignoring a damaged record %s/%s from the store: %s", kind, name[:64], exc)

    def _remote(self, kind: str, name: str, value: bytes | None, now: float) -> None:
        r = self.relay
        registry = r.registry
        if kind == "nodes" and value is not None:
            record = parse_node(name, value)
            if registry.remote_node(record) and record.public_key is not None:
                self.show(name)
        elif kind == "revoked" and value is not None:
            record = registry.remote_revoked(bytes.fromhex(name))
            if record is not None:
                r.revoked_elsewhere(record)
        elif kind == "tokens" and value is not None:
            registry.remote_token(parse_token(name, value))
        elif kind == "tokenuse" and value is not None:
            token_id, _, slot = name.partition("/")
            registry.remote_token_use(bytes.fromhex(token_id), slot)
        elif kind == "routes":
            registry.approvals.replace(name, json.loads(value) if value else ())
            r.approvals_changed()
        elif kind == "mtu" and value is not None:
            record = registry.by_name.get(name)
            if record is not None:
                record.mtu = int(value)
                r.set_mtu(name, record.mtu)
        elif kind == "presence":
            self._presence(name, json.loads(value) if value else None)
        elif kind == "relays":
            self._relay(name, json.loads(value) if value else None, now)

    def _presence(self, name: str, v: dict | None) -> None:
        if v is not None and v.get("relay") == self.id:
            return  # our own write, coming back
        if v is None:
            self.presence.pop(name, None)
        else:
            self.presence[name] = v
            self.homed.discard(name)
        self.show(name)

    def show(self, name: str) -> None:
        """The directory entry of a node that is not online here, from where it is homed."""
        r = self.relay
        record = r.registry.by_name.get(name)
        if record is None or record.public_key is None:
            return
        addr = ipaddress.IPv4Address(record.address).packed
        v = self.presence.get(name)
        m = r.members.get(record.public_key)
        if v is not None and v.get("relay") in self.relays:
            if m is not None and m.online:
                r.moved_away(m)  # it joined another relay since: that one is its home now
            self.homes[addr] = v["relay"]
            routes = (*v.get("routes", ()), *v.get("routes6", ()))
            r.directory.set(Entry(name, addr, record.public_key, True, str(v.get("ep", "")), int(v.get("mtu", 0)),
                                  routes, tuple(v.get("lan", ())), Hello(*v["hello"][:2],
                                  frozenset(v["hello"][2])), record.lock or b""))
            return
        self.homes.pop(addr, None)
        if m is not None and m.online:
            return
        entry = m.entry() if m is not None else Entry(name, addr, record.public_key, False, "", record.mtu or 0,
                                                     lock=record.lock or b"")
        r.directory.set(entry)

    def _relay(self, relay_id: str, record: dict | None, now: float) -> None:
        if relay_id == self.id:
            return
        old = self.relays.pop(relay_id, None)
        if old is not None:
            self.by_boot.pop(old.boot, None)
        if record is not None:
            info = self.relays[relay_id] = RelayInfo(relay_id, record)
            if old is not None and old.boot == info.boot:
                info.heard, info.rtt = old.heard, old.rtt
            self.by_boot[info.boot] = info
            if old is None:
                log.info("relay %s joined the network", relay_id, extra=event("relay_joined", relay=relay_id))
        elif old is not None:
            log.warning("relay %s left the network (its etcd lease ended)", relay_id,
                        extra=event("relay_left", relay=relay_id))
        self.mesh.set_boots(self.by_boot)
        self.relay.directory.set_relays([self.relay.listen, *sorted(i.listen for i in self.relays.values())])
        for name, v in list(self.presence.items()):
            if v.get("relay") == relay_id:
                self.show(name)  # its nodes are offline, or elsewhere, until they say where

    # -- the mesh ------------------------------------------------------------------------

    def forward(self, src, data: bytes) -> bool:
        """A RELAYED datagram from a member, for an address homed on another relay."""
        home = self.homes.get(data[4:8])
        if home is None:
            return False
        info = self.relays.get(home)
        if info is None or info.ep is None:
            self.relay.drops[Drop.RELAYED_HOME_UNREACHABLE] += 1
            return True
        src.rx_bytes += len(data)
        src.rx_packets += 1
        self.relay.send(info.ep, self.mesh.seal(mesh.DATA, src.addr, data[4:8], data[8:]))
        return True

    def control(self, addr: bytes, msg: dict, boot: bytes | None = None) -> bool:
        """A publishing message for the node at addr, to the relay it is homed on (or, with
        boot, from a node homed here to the relay that asked it); False: no such relay."""
        info = self.by_boot.get(boot) if boot is not None else self.relays.get(self.homes.get(addr, ""))
        if info is None or info.ep is None:
            return False
        self.relay.send(info.ep, self.mesh.seal(mesh.CONTROL, bytes(4), addr, messages.encode(msg)))
        return True

    def can_publish(self, name: str) -> bool:
        """Does a node homed elsewhere announce "publish" (as its home wrote its presence)?"""
        hello = (self.presence.get(name) or {}).get("hello")
        return isinstance(hello, list) and len(hello) == 3 and isinstance(hello[2], list) and "publish" in hello[2]

    def on_mesh(self, data: bytes, ep, now: float) -> None:
        r = self.relay
        opened = self.mesh.open(data)
        if opened is None:
            r.drops[self.mesh.last_drop] += 1
            return
        kind, boot, src, dst, inner = opened
        if kind == mesh.DATA:
            m = r.by_addr.get(dst)
            if m is None or not inner:
                r.drops[Drop.MESH_NO_DESTINATION] += 1
                return
            m.tx_bytes += len(inner)
            self.counts["mesh_forwarded"] += 1
            r.send(m.endpoint, wire.relayed_header(src) + inner)
        elif kind == mesh.CONTROL:
            msg = decode_control(inner, r.drops)
            if msg is not None and r.publishing is not None:
                r.publishing.from_mesh(boot, dst, msg, now)
        elif kind == mesh.PING:
            r.send(ep, self.mesh.seal(mesh.PONG, bytes(4), bytes(4), inner))
        elif kind == mesh.PONG and len(inner) == 8:
            info = self.by_boot.get(boot)
            if info is not None:
                info.heard = now
                info.rtt = max(0.0, now - _TIME.unpack(inner)[0])

    # -- time ----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        if now >= self._next_ping:
            self._next_ping = now + PING_EVERY
            for info in self.relays.values():
                if info.ep is not None:
                    self.relay.send(info.ep, self.mesh.seal(mesh.PING, bytes(4), bytes(4), _TIME.pack(now)))

    def presence_writes(self, entries) -> None:
        """After a directory publish: where the nodes online here are now, for the others."""
        r = self.relay
        changes: dict[str, dict | None] = {}
        for e in entries:
            m = r.members.get(e.key)
            if m is None:
                continue
            if m.online and r.by_addr.get(m.addr) is m:
                # IPv6 prefixes apart (0.6 on): a relay before them reads "routes" as IPv4, for its nodes
                changes[m.name] = {"relay": self.id, "ep": e.endpoint, "mtu": e.mtu, "routes": e.wire()[6],
                                   "routes6": e.routes6(), "lan": list(e.lan), "hello": hello_list(e.hello)}
                self.homed.add(m.name)
            elif m.name in self.homed:
                self.homed.discard(m.name)
                changes[m.name] = None
        if changes:
            r.writes.append(SavePresence(changes))

    def resync(self) -> None:
        """The store lost our lease (etcd was away): write every node homed here again."""
        r = self.relay
        self.homed.clear()
        self.presence_writes([m.entry() for m in r.by_addr.values()])

    def status(self, now: float) -> list[dict]:
        """The other relays, as `tunneld status` lists them after this one."""
        return [{"id": info.id, "listen": info.listen, "self": False,
                 "health": "up" if now - info.heard < DOWN_AFTER else "down",
                 "rtt_ms": None if info.rtt is None else round(info.rtt * 1000, 3)}
                for info in sorted(self.relays.values(), key=lambda i: i.id)]

    def let_go(self, record) -> None:
        """A node revoked: it is homed nowhere; if here, its presence goes now, not with our lease."""
        self.homes.pop(ipaddress.IPv4Address(record.address).packed, None)
        if record.name in self.homed:
            self.homed.discard(record.name)
            self.relay.writes.append(SavePresence({record.name: None}))

    def home_of(self, addr: bytes) -> str | None:
        return self.homes.get(addr)
