"""A node's published services at work (engine/publish_node.py checks what the relay asks):

  TCP  "open": connect to the service on our overlay address (the PROXY v2 header first
       when the publish asks for it), then open a work connection to the port of the relay
       that asks (our home, or the one "at" names through it), its
       first frame naming the connection and proving k, and splice the two (splice.py).
       Both are ours to open: this works with no inbound path at all.
  UDP  each flow gets a socket connected to the service; what the service answers goes
       back to the relay as a control message on our session.

A service that refuses (nothing listens) is said to the relay ("shut"), so the client is
refused at once rather than after the relay's wait.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from time import monotonic

from ..engine.publish_node import Served, ServeTcp, ServeUdp
from ..proto import endpoint, proxy
from ..proto.framing import frame
from ..proto.messages import MAX_DATAGRAM
from ..proto.stream import work_frame
from .splice import PlainSide, SealedSide, Splice

log = logging.getLogger("tunneld.node")

PUBLISHING = (ServeTcp, ServeUdp, Served)  # the engine's effects this carries
CONNECT_TIMEOUT = 5.0
MAX_FLOWS = 4096
MAX_CONNECTIONS = 8192  # TCP connections at once, all services: a relay asking for more is refused
UDP_READS = 64


class UdpFlow:
    __slots__ = ("sock", "port", "name", "idle", "last")

    def __init__(self, sock: socket.socket, port: int, name: str, idle: float, now: float):
        self.sock, self.port, self.name, self.idle, self.last = sock, port, name, idle, now


class Serving:
    def __init__(self, daemon):
        self.d = daemon
        self.flows: dict[int, UdpFlow] = {}
        self.live: dict[str, set[Splice]] = {}
        self.ports: set[tuple[str, int]] = set()

    @property
    def stats(self) -> dict:
        return self.d.engine.publishing.stats

    def address(self) -> str | None:
        a = self.d.engine.assignment
        return a.address if a is not None else None

    def carry(self, effect) -> None:
        if isinstance(effect, ServeTcp):
            self.d.loop.create_task(self._tcp(effect))
        elif isinstance(effect, ServeUdp):
            self._udp(effect)
        elif isinstance(effect, Served):
            self._served(effect)

    # -- TCP -----------------------------------------------------------------------------

    async def _tcp(self, e: ServeTcp) -> None:
        stats, loop = self.stats[e.name], self.d.loop
        if sum(len(live) for live in self.live.values()) >= MAX_CONNECTIONS:
            stats["refused"] += 1
            self.d.engine.relay.control({"t": "shut", "id": e.conn_id})
            return
        splice = Splice(stats, self.d.drops, relay_side=False, on_end=self._ended)
        splice.name = e.name
        address = self.address()
        try:
            if address is None:
                raise OSError("no overlay address yet")
            await asyncio.wait_for(loop.create_connection(lambda: PlainSide(splice), address, e.port),
                                   CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            stats["refused"] += 1
            self.d.engine.relay.control({"t": "shut", "id": e.conn_id})
            return
        if e.proxy_protocol == 2:
            src, dst = endpoint.parse(e.src), endpoint.parse(e.dst)
            if src is not None and dst is not None:
                splice.plain.write(proxy.header(src, dst))
        self.live.setdefault(e.name, set()).add(splice)
        relay = (endpoint.parse(e.at) if e.at else None) or self.d.relay_addr  # the relay that asks
        try:
            sealed, _ = await asyncio.wait_for(loop.create_connection(lambda: SealedSide(splice), *relay),
                                               CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            splice.cut()
            return
        if splice.over:  # the service went away meanwhile
            sealed.abort()
            return
        sealed.write(frame(work_frame(e.conn_id, e.k)))
        splice.join(e.k, sealed)

    def _ended(self, splice: Splice, error: bool) -> None:
        live = self.live.get(splice.name)
        if live is not None:
            live.discard(splice)
        st = self.stats.get(splice.name)
        if error and st is not None:
            st["errors"] += 1

    # -- UDP -----------------------------------------------------------------------------

    def _udp(self, e: ServeUdp) -> None:
        now = monotonic()
        f = self.flows.get(e.flow)
        stats = self.stats[e.name]
        if f is None or f.port != e.port:
            if f is not None:
                self._end_flow(e.flow)
            address = self.address()
            if address is None or len(self.flows) >= MAX_FLOWS:
                stats["refused"] += 1
                return
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.connect((address, e.port))
            except OSError:
                sock.close()
                stats["errors"] += 1
                return
            f = self.flows[e.flow] = UdpFlow(sock, e.port, e.name, e.idle, now)
            self.d.loop.add_reader(sock.fileno(), self._answers, e.flow)
            stats["flows"] += 1
        f.last = now
        try:
            f.sock.send(e.data)
        except OSError:  # the service's port is closed (an ICMP error came back), or the buffer is full
            stats["errors"] += 1

    def _answers(self, fid: int) -> None:
        f = self.flows.get(fid)
        if f is None:
            return
        stats = self.stats.get(f.name)
        control = self.d.engine.relay.control
        for _ in range(UDP_READS):
            try:
                data = f.sock.recv(MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                if stats is not None:
                    stats["errors"] += 1
                break
            if stats is None or not data:
                continue
            if len(data) > MAX_DATAGRAM:  # larger than a control message carries: counted, not sent
                stats["errors"] += 1
                continue
            f.last = monotonic()
            stats["datagrams_out"] += 1
            stats["bytes_out"] += len(data)
            control({"t": "udp", "f": fid, "p": 0, "d": data})

    def _end_flow(self, fid: int) -> None:
        f = self.flows.pop(fid)
        self.d.loop.remove_reader(f.sock.fileno())
        f.sock.close()

    # -- what is published, and time -----------------------------------------------------

    def _served(self, e: Served) -> None:
        ports = {(proto, port) for _, proto, port, _ in e.services}
        names = {name for name, *_ in e.services}
        if ports != self.ports:
            log.info("the relay publishes %s", ", ".join(f"{n} ({p}/{port})" for n, p, port, _ in e.services)
                     or "none of our ports")
        self.ports = ports
        for fid, f in list(self.flows.items()):
            if ("udp", f.port) not in ports:
                self._end_flow(fid)
        for name in [n for n in self.live if n not in names]:
            for splice in list(self.live.pop(name)):
                splice.cut()

    def tick(self, now: float) -> None:
        for fid in [fid for fid, f in self.flows.items() if now - f.last > f.idle]:
            self._end_flow(fid)

    def close(self) -> None:
        for fid in list(self.flows):
            self._end_flow(fid)
        for splices in self.live.values():
            for splice in list(splices):
                splice.cut()
