"""The relay's published ports: a TCP listener or a UDP socket on the listen address's host
for each service (engine/publish_relay.py decides; this carries).

  TCP  a client connects -> "open" goes to the node over its session -> the node connects
       back to the relay's own port with a work connection (its first frame proves the
       one-time k) -> the two are spliced (splice.py). The client is not read until then.
  UDP  each client address is a flow: its datagrams go to the node as control messages,
       the node's answers come back the same way and leave from the published port.

Services come from the config file ([[publish]], again on every reload) and from
`tunneld publish add/remove` on the running relay, which are kept in the state dir
(published.json) for the next start. A change is checked whole and its new ports bound
before anything else changes, so a refused one changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections import Counter
from dataclasses import asdict
from time import monotonic

from ..drops import Drop
from ..engine.publish_relay import RelayPublishing
from ..errors import ConfigError
from ..logs import event
from ..proto import endpoint
from ..proto.messages import MAX_DATAGRAM
from ..proto.stream import WORK, WORK_LEN
from ..proto.errors import ProtocolError
from ..publish import Publish, check_together, one
from .base import bound
from .splice import PlainSide, Splice, reset

log = logging.getLogger("tunneld.relay")

ADDED_FILE = "published.json"  # what `tunneld publish add` added, for the next start
UDP_READS = 64  # datagrams read per wakeup of one published UDP port


class Publisher:
    def __init__(self, daemon, state_dir: str, host: str, listen_port: int):
        self.d = daemon
        self.path = os.path.join(state_dir, ADDED_FILE)
        self.host = host
        self.listen_port = listen_port
        self.engine = RelayPublishing(daemon.engine, self._deliver, self._refused)
        daemon.engine.publishing = self.engine
        self.configured: tuple[Publish, ...] = ()  # from the config file
        self.added: tuple[Publish, ...] = ()  # from `tunneld publish add`
        self.allow: tuple = ()
        self.ports: dict[str, object] = {}  # name -> asyncio server (tcp) or socket (udp)
        self.waiting: dict[int, Splice] = {}  # connections whose node has not come back yet
        self.live: dict[str, set[Splice]] = {}
        self.changing = asyncio.Lock()

    # -- what is published ---------------------------------------------------------------

    def load_added(self) -> tuple:
        try:
            with open(self.path) as f:
                return tuple(Publish(**t) for t in json.load(f))  # check() holds each to the rules again
        except FileNotFoundError:
            return ()
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read {self.path}: {str(exc)[:100]}; fix or remove it") from None

    def check(self, configured, added, allow) -> tuple:
        """Every service, checked against allow-ports, each other and the registry."""
        entries = []
        for p in (*configured, *added):
            entries.append(one(_table(p), allow, self.listen_port, f"publish {p.name!r}"))
            if p.node not in self.d.engine.registry.by_name:
                raise ConfigError(f"publish {p.name!r}: no node named {p.node!r} has joined this relay "
                                  "(see 'tunneld status')")
        check_together(entries)
        return tuple(entries)

    def bind(self, entries) -> dict:
        """Sockets for the services not served yet, bound; all or none (ConfigError)."""
        fresh: dict[str, socket.socket] = {}
        try:
            for p in entries:
                old = self.ports_of(p.name)
                if old == (p.protocol, p.remote_port):
                    continue
                fresh[p.name] = _bound(self.host, p.remote_port, p.protocol)
        except ConfigError:
            for sock in fresh.values():
                sock.close()
            raise
        return fresh

    def ports_of(self, name: str):
        p = self.engine.entries.get(name)
        return (p.protocol, p.remote_port) if p is not None and name in self.ports else None

    async def apply(self, entries, fresh: dict, configured=None, added=None) -> None:
        """Serve exactly entries: the fresh sockets go live, what is gone or moved closes."""
        wanted = {p.name: p for p in entries}
        for name in list(self.ports):
            p = wanted.get(name)
            if p is None or name in fresh:
                self._close(name)
        for name, sock in fresh.items():
            p = wanted[name]
            if p.protocol == "tcp":
                self.ports[name] = await self.d.loop.create_server(lambda n=name: self._client(n), sock=sock,
                                                                    backlog=512)
            else:
                self.ports[name] = sock
                self.d.loop.add_reader(sock.fileno(), self._on_udp, name, sock)
            log.info("publishing %s: %s port %s:%d to %s port %d", name, p.protocol, self.host, p.remote_port,
                     p.node, p.port, extra=event("published", service=name, node=p.node, port=p.port,
                                                remote_port=p.remote_port, protocol=p.protocol))
        if configured is not None:
            self.configured = configured
        if added is not None:
            self.added = added
        self.engine.configure(entries)

    def _close(self, name: str) -> None:
        port = self.ports.pop(name)
        if isinstance(port, socket.socket):
            self.d.loop.remove_reader(port.fileno())
        port.close()
        for splice in list(self.live.pop(name, ())):
            splice.cut()
        log.info("stopped publishing %s", name, extra=event("unpublished", service=name))

    def close(self) -> None:
        for name in list(self.ports):
            self._close(name)
        for splice in list(self.waiting.values()):
            splice.cut()

    def save_added(self, added) -> None:
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump([asdict(p) for p in added], f, indent=1)
        os.replace(tmp, self.path)

    # -- the operator's commands ---------------------------------------------------------

    async def add(self, table: dict) -> dict:
        async with self.changing:  # two commands at once: one after the other, each seeing the last
            return await self._add(table)

    async def _add(self, table: dict) -> dict:
        try:
            p = one(table, self.allow, self.listen_port, f"publish {str(table.get('name'))[:40]!r}")
            if p.name in {q.name for q in self.configured}:
                raise ConfigError(f"publish {p.name!r} is in the config file; change it there and reload")
            if p.name in {q.name for q in self.added}:
                raise ConfigError(f"publish {p.name!r} exists; 'tunneld publish remove {p.name}' first")
            added = self.added + (p,)
            entries = self.check(self.configured, added, self.allow)
            fresh = self.bind([p])
        except ConfigError as exc:
            return {"error": str(exc)}
        self.save_added(added)
        await self.apply(entries, fresh, added=added)
        return {"ok": True}

    async def remove(self, name: str) -> dict:
        async with self.changing:
            return await self._remove(name)

    async def _remove(self, name: str) -> dict:
        if name in {q.name for q in self.configured}:
            return {"error": f"publish {name!r} is in the config file; remove it there and reload"}
        if name not in {q.name for q in self.added}:
            return {"error": f"nothing is published as {name[:40]!r}; see 'tunneld publish list'"}
        added = tuple(q for q in self.added if q.name != name)
        self.save_added(added)
        await self.apply((*self.configured, *added), {}, added=added)
        return {"ok": True}

    def rows(self) -> list[dict]:
        configured = {p.name for p in self.configured}
        return [{**row, "from": "config" if row["name"] in configured else "command"}
                for row in self.engine.status()]

    # -- TCP -----------------------------------------------------------------------------

    def _client(self, name: str) -> PlainSide:
        splice = Splice(self.engine.stats.get(name, Counter()), self.d.drops, relay_side=True, on_end=self._ended)
        splice.name = name
        return _Client(self, splice)

    def opened(self, splice: Splice, transport) -> None:
        peer, here = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        conn_id = self.engine.tcp_open(splice.name, endpoint.format(peer), endpoint.format(here), monotonic())
        if conn_id is None:
            reset(transport)  # refused (counted): the node is away, or the service is full
            splice.over = True
            return
        splice.conn_id = conn_id
        self.waiting[conn_id] = splice

    def work(self, stream, data: bytes) -> None:
        """More of a stream whose first frame is WORK: a node's work connection. Its first
        frame names the connection waiting for it and proves k; the rest is the splice's."""
        try:
            frames = stream.deframer.feed(data)
        except ProtocolError:
            self.d.drops[Drop.TCP_BAD_FRAMING] += 1
            stream.transport.abort()
            return
        if not frames:
            return  # the rest of the first frame is on its way
        taken = self.engine.work(frames[0])
        splice = self.waiting.pop(taken[0], None) if taken is not None else None
        if splice is None:
            reset(stream.transport)  # unproven (counted), or the client left meanwhile
            return
        stream.splice = splice
        self.d.forget_stream(stream)  # the service's limit bounds it now, not the streams'
        self.live.setdefault(splice.name, set()).add(splice)
        splice.deframer = stream.deframer  # it holds what followed the first frame
        splice.join(taken[1], stream.transport)
        splice.frames_in(frames[1:])

    def _ended(self, splice: Splice, error: bool) -> None:
        conn_id = getattr(splice, "conn_id", None)
        if conn_id is not None and self.waiting.pop(conn_id, None) is not None:
            self.engine.abandon(conn_id)  # the client left before the node came back
            return
        live = self.live.get(splice.name)
        if live is not None and splice in live:
            live.discard(splice)
            self.engine.closed(splice.name, error)

    def _refused(self, conn_id: int) -> None:
        splice = self.waiting.pop(conn_id, None)
        if splice is not None:
            splice.conn_id = None
            splice.cut()

    # -- UDP -----------------------------------------------------------------------------

    def _on_udp(self, name: str, sock: socket.socket) -> None:
        now = monotonic()
        udp_in = self.engine.udp_in
        for _ in range(UDP_READS):
            try:
                data, client = sock.recvfrom(MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.d.drops[Drop.UDP_RECV_ERROR] += 1
                break
            if 0 < len(data) <= MAX_DATAGRAM:
                udp_in(name, client, data, now)
            else:
                self.engine.stats[name]["errors"] += 1
        self.d.after_input()

    def _deliver(self, name: str, client, data: bytes) -> None:
        sock = self.ports.get(name)
        if isinstance(sock, socket.socket):
            try:
                sock.sendto(data, client)
            except OSError:
                self.engine.stats[name]["errors"] += 1


class _Client(PlainSide):
    def __init__(self, publisher: Publisher, splice: Splice):
        super().__init__(splice)
        self.publisher = publisher

    def connection_made(self, transport):
        super().connection_made(transport)
        self.publisher.opened(self.splice, transport)


def _table(p: Publish) -> dict:
    return {"name": p.name, "node": p.node, "port": p.port, "remote-port": p.remote_port, "protocol": p.protocol,
            "proxy-protocol": p.proxy_protocol, "max-connections": p.max_connections,
            "idle-timeout": p.idle_timeout}


def _bound(host: str, port: int, protocol: str) -> socket.socket:
    tcp = protocol == "tcp"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    sock.setblocking(False)
    if tcp:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    bound(sock, host, port, protocol.upper(), "remote-port")
    if tcp:
        sock.listen(512)
    return sock


def is_work(first: bytes) -> bool:
    """Do a stream's first bytes begin a WORK frame (proto/stream.py)?"""
    return len(first) >= 3 and first[0] == 0 and first[1] == WORK_LEN and first[2] == WORK
