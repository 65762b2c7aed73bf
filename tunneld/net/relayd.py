"""`tunneld serve`: the relay engine on a UDP socket and a TCP listener of the same port."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import Counter
from time import monotonic

from ..config import ServeSettings
from ..control.registry import Registry
from ..engine.relay import Relay
from ..errors import ConfigError
from ..host.notify import notify
from ..state import DB_FILE, SOCKET_FILE, load_identity, prepare_dir
from ..store.base import StoreError
from ..store.sqlite import SqliteStore
from . import ctlsock
from .base import READ_BATCH, Daemon, FramedStream, bind_error, udp_socket
from .udpio import Batch, enable_gro, read as udp_read

log = logging.getLogger("tunneld.relay")

TCP_WRITE_LIMIT = 4 << 20  # a node that does not read: drop rather than buffer without end
TCP_AUTH_TIMEOUT = 30.0  # a stream that never authenticates is closed
MAX_STREAMS = 4096


class RelayStream(FramedStream):
    """One node's TCP stream; it is its own endpoint to the engine."""

    def __init__(self, daemon: "RelayDaemon"):
        super().__init__(daemon)
        self.endpoint = self
        self.opened = 0.0
        self.label = "tcp"
        self.host = "tcp"  # the peer's address: its share of handshakes under load (engine/relay.py)

    def connection_made(self, transport):
        super().connection_made(transport)
        d = self.daemon
        self.opened = monotonic()
        peer = transport.get_extra_info("peername")
        self.label = f"tcp:{peer[0]}:{peer[1]}" if peer else "tcp"
        self.host = peer[0] if peer else "tcp"
        if len(d.streams) >= MAX_STREAMS:
            d.engine.drops["tcp_too_many_streams"] += 1
            transport.abort()
            return
        d.streams.add(self)

    def connection_lost(self, exc):
        d = self.daemon
        self.count_truncated()
        d.streams.discard(self)
        d.engine.link_closed(self)

    def write(self, msg: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if t.get_write_buffer_size() > TCP_WRITE_LIMIT:
            self.daemon.engine.drops["tcp_backpressure"] += 1
            return
        self.send_frame(msg)


class RelayDaemon(Daemon):
    def __init__(self, settings: ServeSettings):
        super().__init__()
        self.settings = settings
        self.streams: set[RelayStream] = set()
        self.engine: Relay | None = None
        self.sock: socket.socket | None = None
        self.batch: Batch | None = None
        self.gro = False

    async def run(self) -> tuple[int, str]:
        s = self.settings
        # Bind first: a wrong --listen must fail before anything is written to the state dir.
        udp, tcp = self._bind()
        try:  # closing twice is harmless: _serve closes them too when it stops
            state_dir = prepare_dir(s.state_dir)
            identity = load_identity(state_dir)
            try:
                store = SqliteStore(os.path.join(state_dir, DB_FILE))
            except StoreError as exc:
                raise ConfigError(str(exc)) from None
            try:
                return await self._serve(store, identity, state_dir, udp, tcp)
            finally:
                store.close()
        finally:
            udp.close()
            tcp.close()

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        s = self.settings
        udp = udp_socket(s.listen_host, s.port, "--listen")
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind((s.listen_host, s.port))
        except OSError as exc:
            tcp.close()
            udp.close()
            raise bind_error(exc, s.listen_host, s.port, "TCP", "--listen") from None
        return udp, tcp

    async def _serve(self, store, identity, state_dir, udp, tcp_sock) -> tuple[int, str]:
        s = self.settings
        self.sock = udp
        known = store.get_meta("network")
        if known is not None and known != str(s.network) and store.nodes():
            raise ConfigError(f"this state dir serves --network {known}, which has nodes; "
                              f"run with --network {known}, or use a new --state-dir")
        store.set_meta("network", str(s.network))
        self.start_base()
        loop = self.loop
        listen = f"{s.listen_host}:{s.port}"
        self.engine = Relay(identity, Registry(store, s.network), self._send, monotonic(), listen=listen,
                            relay_mtu=self._underlay_mtu(s.listen_host))
        self.gro = enable_gro(self.sock)
        self.stats = Counter()
        self.batch = Batch(self.sock, self.engine.drops, self.stats)
        server = await loop.create_server(lambda: RelayStream(self), sock=tcp_sock, backlog=1024)
        ctl = await ctlsock.serve(os.path.join(state_dir, SOCKET_FILE), self._control)
        loop.add_reader(self.sock.fileno(), self._on_udp)
        log.info("relay listening on %s (UDP and TCP), network %s, key %s",
                 listen, s.network, identity.public.hex())
        notify("READY=1\nSTATUS=relay listening on " + listen)
        try:
            return await self.wait()
        finally:
            notify("STOPPING=1")
            self.engine.flush_seen()
            loop.remove_reader(self.sock.fileno())
            self.stop_base()
            ctl.close()
            server.close()
            for stream in list(self.streams):
                stream.transport.abort()
            self.sock.close()
            try:
                os.unlink(os.path.join(state_dir, SOCKET_FILE))
            except OSError:
                pass

    @staticmethod
    def _underlay_mtu(host: str) -> int:
        """The relay's own link MTU, one of the paths the overlay MTU must fit."""
        from ..host.links import Links
        with Links() as links:
            mtu = links.local_mtu(host)
        if mtu is None:
            log.warning("cannot tell the MTU of the relay's link (no default route); assuming 1500")
            return 1500
        return mtu

    def _send(self, ep, data: bytes) -> None:
        if ep.__class__ is tuple:
            self.batch.send(data, ep)
        else:
            ep.write(data)

    def _on_udp(self) -> None:
        """The relay's hot path: read (GRO trains cut apart) -> engine.receive rewrites the
        4-byte address field and sends on -> a train to one node leaves in one sendmsg."""
        now = monotonic()
        sock, gro = self.sock, self.gro
        receive = self.engine.receive
        batch = self.batch
        batch.active = True
        try:
            for _ in range(READ_BATCH):
                got = udp_read(sock, gro, self.engine.drops, self.stats)
                if got is None:
                    break
                datagrams, addr = got
                for data in datagrams:
                    try:
                        receive(data, addr, now)
                    except Exception:  # inlined Daemon.receive: this loop is the relay's hot path
                        self.internal_error()
        finally:
            batch.active = False
            batch.flush()

    def tick(self, now: float) -> None:
        self.engine.tick(now)
        bound = self.engine.by_endpoint
        for stream in list(self.streams):
            if stream not in bound and now - stream.opened > TCP_AUTH_TIMEOUT:
                self.engine.drops["tcp_unauthenticated_timeout"] += 1
                stream.transport.abort()
                self.streams.discard(stream)

    def _control(self, request: dict) -> dict:
        if request.get("cmd") == "status":
            status = self.engine.status()
            status["tcp_streams"] = len(self.streams)
            status["tasks"] = len(asyncio.all_tasks())
            status["offload"] = {"udp_gso": self.batch.gso, "udp_gro": self.gro, **self.stats}
            return status
        if request.get("cmd") == "revoke" and isinstance(request.get("name"), str):
            if self.engine.revoke(request["name"]):
                return {"ok": True}
            return {"error": f"no node named {request['name'][:64]!r} with a key on this relay"}
        return {"error": f"unknown command {str(request.get('cmd'))[:40]!r}"}
