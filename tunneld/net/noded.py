"""`tunneld join`: the node engine between the TUN device and the relay.

Start-up order, because kubelet depends on it:
  1. key, token and the route to the relay (which must not use the overlay);
  2. the TUN device (persistent; re-attached if it exists);
  3. if the state dir remembers an address from this relay, configure it and tell
     systemd READY at once, before the relay answers (the relay may be down);
  4. otherwise READY follows the relay's first answer.
The node then reconnects forever; only a refusal (exit 3) or a signal ends it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import shutil
import socket
from collections import Counter
from time import monotonic

from ..config import JoinSettings
from ..engine.node import OVERHEAD, RELAY, Assignment, Node
from ..engine.offload import VNET_HDR_LEN, Coalescer, single, split
from ..errors import ConfigError, HostError
from ..host.cpu import has_aes
from ..host import nat
from ..host.links import Links
from ..host.notify import notify
from ..host.tun import Tun
from ..proto import wire
from ..proto.token import JoinToken, TokenError
from ..state import SOCKET_FILE, load_identity, load_node_cache, prepare_dir, save_node_cache
from . import ctlsock
from .base import READ_BATCH, Daemon, FramedStream, udp_socket
from .udpio import Batch, enable_gro, read as udp_read

log = logging.getLogger("tunneld.node")

MIN_MTU = wire.MIN_OVERLAY_MTU
TCP_CONNECT_TIMEOUT = 5.0
TCP_QUEUE = 256
TUN_READS = 64  # reads per readiness callback; each may carry a 64 KB TCP super-packet
TUN_READ_SIZE = VNET_HDR_LEN + 65535
WRITE_BATCH = 64  # packets held for merging before they go to the TUN device


class RelayStream(FramedStream):
    """The TCP fallback to the relay. Messages sent while it connects wait in a short backlog."""

    endpoint = RELAY

    def __init__(self, daemon: "NodeDaemon"):
        super().__init__(daemon)
        self.backlog: list[bytes] = []
        self.closed = False

    def connection_made(self, transport):
        super().connection_made(transport)
        for msg in self.backlog:
            self.send_frame(msg)
        self.backlog = []

    def connection_lost(self, exc):
        self.closed = True
        self.count_truncated()
        self.daemon.stream_lost(self)

    def write(self, msg: bytes) -> None:
        if self.transport is None:
            if len(self.backlog) < TCP_QUEUE:
                self.backlog.append(msg)
            return
        if not self.transport.is_closing():
            self.send_frame(msg)


class NodeDaemon(Daemon):
    def __init__(self, settings: JoinSettings):
        super().__init__()
        self.settings = settings
        self.engine: Node | None = None
        self.tun: Tun | None = None
        self.links: Links | None = None
        self.sock: socket.socket | None = None
        self.relay_addr = (settings.relay_ip, settings.relay_port)
        self.relay_label = f"{settings.relay_ip}:{settings.relay_port}"
        self.ready = False
        self.accepted_routes: list[str] = []
        self.use_tcp = False
        self.stream: RelayStream | None = None
        self._stream_started = -1.0
        self.state_dir = ""
        self.batch: Batch | None = None
        self.gro = False
        self.coalescer = Coalescer()
        self._coalescing = False
        self.stats = Counter()  # offload at work, counted per batch (never per packet)

    async def run(self) -> tuple[int, str]:
        s = self.settings
        try:
            token = JoinToken.parse(s.token_text)
        except TokenError as exc:
            raise ConfigError(str(exc)) from None
        self.state_dir = prepare_dir(s.state_dir)
        identity = load_identity(self.state_dir)
        self.links = Links()
        try:
            return await self._run(identity, token)
        finally:
            self.links.close()

    async def _run(self, identity, token: JoinToken) -> tuple[int, str]:
        s = self.settings
        route = self.links.route_to(s.relay_ip)
        if route.ifname == s.interface:
            raise ConfigError(f"the route to the relay {s.relay_ip} goes through {s.interface} itself; "
                              "the relay must be reachable without the overlay")
        if route.mtu - OVERHEAD < MIN_MTU:
            raise HostError(f"the path to the relay has an MTU of {route.mtu}, too small for a tunnel")
        cache = load_node_cache(self.state_dir)
        assignment, mtu = Assignment.from_cache(cache, token.relay_public.hex()), None
        if assignment is not None:
            cached_mtu = cache.get("mtu")
            if type(cached_mtu) is int and MIN_MTU <= cached_mtu <= route.mtu - OVERHEAD:
                mtu = cached_mtu  # the overlay's, as last known: pods may already use it
        self.tun = Tun.open(s.interface)
        self.start_base()
        loop = self.loop
        try:
            self.sock = udp_socket("0.0.0.0", s.port, "--port")
            self.gro = enable_gro(self.sock)
            lan = self._lan_endpoints(route.ifname, self.sock.getsockname()[1])
            self.engine = Node(identity, token.relay_public, s.name, token.credential, self, monotonic(),
                               suite=wire.SUITE_AESGCM if has_aes() else wire.SUITE_CHACHAPOLY,
                               underlay_mtu=route.mtu, assignment=assignment, relay_label=self.relay_label,
                               mtu=mtu, routes=s.advertise_routes, accept_routes=s.accept_routes,
                               protected=(s.relay_ip,), lan=lan)
            self.batch = Batch(self.sock, self.engine.drops, self.stats)
            if assignment is not None:
                self._configure(assignment)
            ctl = await ctlsock.serve(os.path.join(self.state_dir, SOCKET_FILE), self._control)
            loop.add_reader(self.sock.fileno(), self._on_udp)
            loop.add_reader(self.tun.fd, self._on_tun)
            log.info("joining relay %s as %s via %s (underlay MTU %d)",
                     self.relay_label, s.name, route.ifname, route.mtu)
            self.engine.tick(monotonic())
            try:
                code, message = await self.wait()
            finally:
                notify("STOPPING=1")
                if self.engine.relay.up and code == 0:
                    self.engine.bye()
                loop.remove_reader(self.sock.fileno())
                loop.remove_reader(self.tun.fd)
                self.stop_base()
                ctl.close()
                try:
                    os.unlink(os.path.join(self.state_dir, SOCKET_FILE))
                except OSError:
                    pass
            return code, message
        finally:
            if self.stream is not None and self.stream.transport is not None:
                self.stream.transport.abort()
            if self.sock is not None:
                self.sock.close()
            self.tun.close()  # the interface persists, with its address and routes

    # -- NodeIO ------------------------------------------------------------------------

    def send(self, ep, data: bytes) -> None:
        if ep is RELAY:
            if self.use_tcp:
                self._stream().write(data)
                return
            ep = self.relay_addr
        self.batch.send(data, ep)

    def write_tun(self, packet: bytes) -> None:
        if self._coalescing:
            self.coalescer.add(packet)
        else:
            self._write(single(packet))

    def _write(self, bufs: list) -> None:
        try:
            os.writev(self.tun.fd, bufs)
        except OSError:
            self.engine.drops["tun_write_error"] += 1

    def joined(self, assignment: Assignment) -> None:
        net = ipaddress.IPv4Network(assignment.network)
        if ipaddress.IPv4Address(self.settings.relay_ip) in net:
            self.finish(2, f"the relay's address {self.settings.relay_ip} lies inside the overlay "
                        f"network {net}; give the relay an address outside it")
            return
        try:
            self._configure(assignment)
        except HostError as exc:
            self.finish(1, str(exc))
            return
        self._save_cache()

    def set_mtu(self, mtu: int) -> None:
        if self.ready:
            try:
                self.links.set_mtu(self.settings.interface, mtu)
            except HostError as exc:
                log.error("%s", exc)
                return
            log.info("%s MTU is now %d", self.settings.interface, mtu)
            self._save_cache()

    def set_routes(self, prefixes: list[str]) -> None:
        self.accepted_routes = list(prefixes)
        if self.ready:
            self._install_routes()

    def refused(self, code: str, message: str) -> None:
        self.finish(3, f"refused by the relay at {self.relay_label}: {message}")

    def relay_transport(self, tcp: bool) -> None:
        if tcp == self.use_tcp:
            return
        self.use_tcp = tcp
        log.info("trying the relay over %s", "TCP" if tcp else "UDP")
        if not tcp and self.stream is not None:
            if self.stream.transport is not None:
                self.stream.transport.close()
            self.stream = None

    # -- adapters ----------------------------------------------------------------------

    def _configure(self, assignment: Assignment) -> None:
        mtu = self.engine.mtu
        s = self.settings
        self.links.configure(s.interface, assignment.interface_address, mtu)
        if s.accept_routes:
            self._install_routes()
        self._gateway(assignment)
        if not self.ready:
            self.ready = True
            log.info("%s is up with %s, MTU %d", self.settings.interface, assignment.interface_address, mtu)
            notify(f"READY=1\nSTATUS={self.settings.interface} {assignment.address}")

    def _gateway(self, assignment: Assignment) -> None:
        """As a gateway into the advertised prefixes: forwarding on, overlay traffic masqueraded."""
        s = self.settings
        if s.advertise_routes:
            if nat.enable_forwarding():
                log.info("turned on IPv4 forwarding for the advertised routes")
            if s.snat_routes:
                nat.masquerade(assignment.network, list(s.advertise_routes), s.interface)
                log.info("masquerading overlay traffic into %s", ", ".join(s.advertise_routes))
        elif shutil.which("nft"):
            nat.remove()  # a rule left from a run that advertised routes

    def _install_routes(self) -> None:
        try:
            self.links.set_routes(self.settings.interface, self.accepted_routes)
        except HostError as exc:
            log.error("%s", exc)
            return
        log.info("routes through %s: %s", self.settings.interface, ", ".join(self.accepted_routes) or "none")

    def _lan_endpoints(self, underlay: str, port: int) -> tuple[str, ...]:
        """Where neighbours on our LAN may reach us directly: the underlay interface's addresses.
        (Only that interface's: an address routed over the overlay itself, cni0's say, must
        never become a direct path.)"""
        out = []
        for iface in self.links.addresses(underlay):
            if not (iface.ip.is_loopback or iface.ip.is_link_local):
                out.append(f"{iface.ip}:{port}")
        return tuple(out[:8])

    def _save_cache(self) -> None:
        a = self.engine.assignment
        if a is not None:
            save_node_cache(self.state_dir, {
                "relay_key": self.engine.relay.key.hex(), "relay": self.relay_label, "name": a.name,
                "address": a.address, "network": a.network, "mtu": self.engine.mtu,
            })

    def _stream(self) -> RelayStream:
        stream = self.stream
        if stream is None or stream.closed:
            stream = self.stream = RelayStream(self)
            self.loop.create_task(self._connect(stream))
        return stream

    async def _connect(self, stream: RelayStream) -> None:
        try:
            await asyncio.wait_for(self.loop.create_connection(lambda: stream, *self.relay_addr),
                                   TCP_CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            stream.closed = True
            self.engine.drops["tcp_connect_failed"] += 1

    def stream_lost(self, stream: RelayStream) -> None:
        if stream is self.stream:
            self.stream = None
            if self.use_tcp:
                self.engine.transport_lost(monotonic())

    def _on_udp(self) -> None:
        """Pipeline: read (a GRO train is cut into datagrams) -> engine.receive each ->
        write_tun merges in-order TCP segments -> flush to the TUN device and the socket."""
        now = monotonic()
        sock, gro = self.sock, self.gro
        receive = self.engine.receive
        relay = self.relay_addr
        coalescer = self.coalescer
        self._coalescing = self.batch.active = True
        try:
            for _ in range(READ_BATCH):
                got = udp_read(sock, gro, self.engine.drops, self.stats)
                if got is None:
                    break
                datagrams, addr = got
                ep = RELAY if addr == relay else addr
                for data in datagrams:
                    try:
                        receive(data, ep, now)
                    except Exception:
                        self.internal_error()
                if len(coalescer.items) >= WRITE_BATCH:
                    self._flush()
        finally:
            self._coalescing = self.batch.active = False
            self._flush()

    def _flush(self) -> None:
        for bufs in self.coalescer.flush():
            if len(bufs) > 4:
                self.stats["tun_merged_writes"] += 1
            self._write(bufs)
        self.batch.flush()

    def _on_tun(self) -> None:
        """Pipeline: read (header + packet, up to 64 KB) -> split into MTU-sized packets ->
        engine.from_tun each (route, clamp, seal) -> batched sends, flushed at the end."""
        now = monotonic()
        read = os.read
        fd = self.tun.fd
        from_tun = self.engine.from_tun
        drops = self.engine.drops
        self.batch.active = True
        try:
            for _ in range(TUN_READS):
                try:
                    buf = read(fd, TUN_READ_SIZE)
                except BlockingIOError:
                    break
                except OSError:
                    drops["tun_read_error"] += 1
                    break
                packets, reason = split(buf)
                if reason:
                    drops[reason] += 1
                elif len(packets) > 1:
                    self.stats["tun_super_reads"] += 1
                for packet in packets:
                    try:
                        from_tun(packet, now)
                    except Exception:
                        self.internal_error()
        finally:
            self.batch.active = False
            self.batch.flush()

    def tick(self, now: float) -> None:
        self.engine.tick(now)

    def _control(self, request: dict) -> dict:
        if request.get("cmd") == "status":
            status = self.engine.status()
            status["interface"] = self.settings.interface
            status["ready"] = self.ready
            status["offload"] = {"tun": self.tun.offload, "udp_gso": self.batch.gso, "udp_gro": self.gro,
                                 **self.stats}
            return status
        return {"error": f"unknown command {str(request.get('cmd'))[:40]!r}"}
