"""The overlay's member list, as the relay publishes it and as each node mirrors it.

The relay holds a versioned Directory. Each publish closes the changes since the last
into a new version. A node that holds any version of this directory gets what changed
since: the entries whose last change is newer, oldest first, as deltas chained by
version (each message's base is the version the one before it ends at); only a node
that holds none (a new node, or one coming from another relay) gets a full snapshot in
chunks. Nodes report their version in every ping, so a lost message is repaired by the
next ping. A restarted relay starts from a new version, above any it handed out before,
so every node resynchronises.

What a publish costs the relay is one delta per member, mostly the same one (cached per
base version), whatever the size of the directory: a join storm of N nodes costs about
N deltas per publish, not N snapshots.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..proto.messages import MAX_MESSAGE, MAX_NODES_PER_CHUNK, encode
from ..proto.version import LEGACY, Hello

# Entries per message, by bytes as well as by count: a node accepts at most MAX_MESSAGE bytes
# and (before 0.3.0) MAX_NODES_PER_CHUNK entries, and members choose how long their names,
# routes and LAN lists are. What is left of MAX_MESSAGE is for the message's own fields.
CHUNK_BYTES = MAX_MESSAGE - 1024


@dataclass(frozen=True)
class Entry:
    name: str
    addr: bytes  # overlay IPv4 address, 4 bytes
    key: bytes  # static public key, 32 bytes
    online: bool
    endpoint: str  # as the relay observes it, "" when unknown
    mtu: int = 0  # the node's underlay MTU, 0 when unknown
    routes: tuple = ()  # prefixes (CIDR strings) the node routes for others, IPv4 and IPv6
    lan: tuple = ()  # endpoints on its own LAN, direct-path candidates for its neighbours
    hello: Hello = LEGACY  # the protocol range and capabilities it announced when it joined
    lock: bytes = b""  # its network-lock chain (proto/lock.py), empty if it has none

    def wire(self) -> list:
        """The 8-list every release reads: its IPv4 prefixes only (routes6 carries the rest)."""
        return [self.name, self.addr, self.key, self.online, self.endpoint, self.mtu,
                [r for r in self.routes if ":" not in r], list(self.lan)]

    def routes6(self) -> list:
        return [r for r in self.routes if ":" in r]

    def size(self) -> int:
        """Bytes this entry takes in a message (its hello, lock and IPv6 prefixes included)."""
        return (len(encode(self.wire())) + len(encode(hello_list(self.hello))) + len(encode(self.lock))
                + len(encode(self.routes6())))


def hello_list(h: Hello) -> list:
    """A hello as directory messages (and presence records in etcd) carry it."""
    return [h.newest, h.oldest, sorted(h.caps)]


def _full(count: int, used: int, size: int) -> bool:
    """Does a message holding count entries in used bytes take no entry of size more? The one
    rule by which publish() splits versions and _deltas() cuts messages: they must agree."""
    return bool(count or used) and (count == MAX_NODES_PER_CHUNK or used + size > CHUNK_BYTES)


def _chunks(entries: list[Entry], sizes, budget: int) -> list[list[Entry]]:
    chunks, chunk, used = [], [], 0
    for e in entries:
        size = sizes(e)
        if chunk and (len(chunk) == MAX_NODES_PER_CHUNK or used + size > budget):
            chunks.append(chunk)
            chunk, used = [], 0
        chunk.append(e)
        used += size
    return chunks + [chunk] if chunk else chunks


def _message(version: int, base: int | None, i: int, count: int, mtu: int, entries: list[Entry],
             gone: list[bytes], relays: list[str]) -> dict:
    msg = {"t": "dir", "v": version, "base": base, "i": i, "c": count, "mtu": mtu,
           "nodes": [e.wire() for e in entries], "gone": gone,
           "hellos": [hello_list(e.hello) for e in entries], "locks": [e.lock for e in entries]}
    if any(":" in r for e in entries for r in e.routes):  # IPv6 prefixes (since 0.6.0; older nodes ignore it)
        msg["routes6"] = [e.routes6() for e in entries]
    if relays:  # several relays serve the network (since 0.4.0; older nodes ignore it)
        msg["relays"] = relays
    return msg


class Directory:
    def __init__(self, version: int):
        self.version = version
        self._mtu = 0  # the overlay MTU, sent with every message
        self.entries: dict[bytes, Entry] = {}
        self._sizes: dict[Entry, int] = {}
        self._changed: dict[bytes, Entry | None] = {}
        self.last_delta: tuple[int, int, list[Entry], list[bytes]] | None = None
        self.first = version  # deltas start from this version or a later one
        self._order: dict[bytes, int] = {}  # addr -> version of its last change, oldest first
        self._cache: dict[int | None, list[dict]] = {}  # messages by the version they start from
        self._encoded: dict[int, tuple[list[dict], list[bytes]]] = {}  # and as bytes
        self.relays: list[str] = []  # the live relays' addresses, when there are several
        self._relays_changed = False

    def set_relays(self, relays: list[str]) -> None:
        if relays != self.relays:
            self.relays = relays
            self._relays_changed = True

    @property
    def mtu(self) -> int:
        return self._mtu

    @mtu.setter
    def mtu(self, value: int) -> None:
        if value != self._mtu:
            self._mtu = value
            self._cache, self._encoded = {}, {}  # every message carries it

    @property
    def dirty(self) -> bool:
        return bool(self._changed) or self._relays_changed

    def set(self, entry: Entry) -> None:
        old = self.entries.get(entry.addr)
        if old != entry:
            self._sizes.pop(old, None)
            self._sizes[entry] = entry.size()
            self.entries[entry.addr] = entry
            self._changed[entry.addr] = entry

    def remove(self, addr: bytes) -> None:
        old = self.entries.pop(addr, None)
        if old is not None:
            self._sizes.pop(old, None)
            self._changed[addr] = None

    def _size(self, entry: Entry) -> int:
        size = self._sizes.get(entry)
        return entry.size() if size is None else size

    def publish(self) -> None:
        """Close the pending changes into new versions: one for each message's worth of them,
        so that what changed in any one version fits one delta message (_deltas cuts between
        versions; a node that lost one message resumes from the version before it)."""
        if not self._changed and not self._relays_changed:
            return
        self._relays_changed = False
        base = self.version
        self.version += 1
        count = used = 0
        for addr, e in self._changed.items():
            size = self._size(e) if e is not None else 6
            if _full(count, used, size):
                self.version += 1
                count = used = 0
            count += e is not None
            used += size
            self._order.pop(addr, None)
            self._order[addr] = self.version  # moves to the end: the order is by last change
        nodes = [e for e in self._changed.values() if e is not None]
        gone = [a for a, e in self._changed.items() if e is None]
        self.last_delta = (base, self.version, nodes, gone)
        self._changed = {}
        self._cache, self._encoded = {}, {}
        if len(self._order) > 2 * len(self.entries) + 1024:  # forget the oldest removals
            for addr, v in list(self._order.items()):
                if len(self._order) <= len(self.entries) + 512:
                    break
                if addr not in self.entries:
                    del self._order[addr]
                    self.first = max(self.first, v)  # a node older than this missed a removal

    def messages_for(self, held_version: int | None) -> list[dict]:
        """What brings a node holding held_version up to date (nothing if it is)."""
        if held_version == self.version:
            return []
        msgs = self._cache.get(held_version)
        if msgs is None:
            if held_version is not None and self.first <= held_version < self.version:
                msgs = self._deltas(held_version)
            msgs = self._cache[held_version] = msgs or self.snapshot()
        return msgs

    def encoded(self, msgs: list[dict]) -> list[bytes]:
        """msgs (from messages_for) as sent: encoded once per publish, for every member."""
        key = id(msgs)
        out = self._encoded.get(key)
        if out is None or out[0] is not msgs:
            out = self._encoded[key] = (msgs, [encode(m) for m in msgs])
        return out[1]

    def _deltas(self, held: int) -> list[dict] | None:
        """The changes since held as chained deltas; None if they do not split at versions."""
        changed = []
        for addr, v in reversed(self._order.items()):
            if v <= held:
                break
            changed.append((v, addr))
        out, base, nodes, gone, used = [], held, [], [], 0
        for v, addr in reversed(changed):
            e = self.entries.get(addr)
            size = self._size(e) if e is not None else 6
            if _full(len(nodes), used, size):
                # This message ends just before v: whatever it holds of v is newer than that,
                # which a mirror may hold early; the rest of v comes in the next message.
                if v - 1 <= base:
                    return None  # one version's changes do not fit a message: a snapshot
                out.append(_message(v - 1, base, 0, 1, self.mtu, nodes, gone, self.relays))
                base, nodes, gone, used = v - 1, [], [], 0
            if e is None:
                gone.append(addr)
            else:
                nodes.append(e)
            used += size
        out.append(_message(self.version, base, 0, 1, self.mtu, nodes, gone, self.relays))
        return out

    def snapshot(self) -> list[dict]:
        cached = self._cache.get("snapshot")
        if cached is None:
            chunks = _chunks(list(self.entries.values()), self._size, CHUNK_BYTES) or [[]]
            cached = self._cache["snapshot"] = [_message(self.version, None, i, len(chunks), self.mtu, chunk, [],
                                                         self.relays) for i, chunk in enumerate(chunks)]
        return cached


class DirectoryMirror:
    """A node's copy. apply() returns True when the entries changed."""

    def __init__(self):
        self.version: int | None = None
        self.mtu = 0
        self.entries: dict[bytes, Entry] = {}
        self.relays: list[str] = []  # every live relay of the network, as the last message said
        self._partial_version: int | None = None
        self._partial: dict[int, list] = {}

    def apply(self, msg: dict) -> bool:
        self.mtu = msg["mtu"]
        self.relays = msg.get("relays") or self.relays
        hellos = msg.get("hellos") or [LEGACY] * len(msg["nodes"])
        locks = msg.get("locks") or [b""] * len(msg["nodes"])
        routes6 = msg.get("routes6") or [()] * len(msg["nodes"])
        nodes = [Entry(*n[:6], (*n[6], *r6), n[7], hello, lock)
                 for n, hello, lock, r6 in zip(msg["nodes"], hellos, locks, routes6)]
        if msg["base"] is not None:
            if msg["base"] != self.version:
                return False  # our next ping reports our version; the relay sends a snapshot
            for e in nodes:
                self.entries[e.addr] = e
            for a in msg["gone"]:
                self.entries.pop(a, None)
            self.version = msg["v"]
            return True
        if msg["v"] != self._partial_version:
            self._partial_version = msg["v"]
            self._partial = {}
        self._partial[msg["i"]] = nodes
        if len(self._partial) < msg["c"] or any(i not in self._partial for i in range(msg["c"])):
            return False
        self.entries = {e.addr: e for chunk in self._partial.values() for e in chunk}
        self.version = msg["v"]
        self._partial_version = None
        self._partial = {}
        return True
