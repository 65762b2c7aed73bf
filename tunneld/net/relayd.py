"""`tunneld serve`: the relay engine on a UDP socket and a TCP listener of the same port,
and its store.

The store is read once at start. From then on the engine decides from memory and
hands its writes (store/base.py) to the StoreWriter, which carries them out one after
another on the store's own thread, never on the packet path; a new node's answer
waits for its registration to be durable.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections import Counter
from time import monotonic

from ..config import ServeSettings
from ..control import overlay6
from ..control.approvals import ApprovalError
from ..control.registry import Registry
from ..drops import Drop
from ..engine.inner import IPV6_EXTRA
from ..engine.relay import Relay
from ..errors import ConfigError
from ..host.links import Links
from ..host.notify import notify
from ..proto.lock import format_public
from ..proto.wire import UDP_OVERHEAD_IPV4
from ..state import DB_FILE, SOCKET_FILE, load_identity, prepare_dir
from ..store.base import Register, StoreError
from ..proto import aead, endpoint, mesh
from ..store.etcd import open_store
from ..store.sqlite import SqliteStore
from .shared import SharedStore, shared_identity
from . import ctlsock, metrics_http, steer
from .relay_workers import RelayWorkers
from .publish_relay import Publisher, is_work
from .splice import plain_paused
from .base import READ_BATCH, Daemon, FramedStream, real_env, tcp_socket, udp_socket
from .backlog import Backlog
from .udpio import Batch, enable_gro, reads as udp_reads

log = logging.getLogger("tunneld.relay")

TCP_WRITE_LIMIT = 4 << 20  # a node that does not read: drop rather than buffer without end
TCP_AUTH_TIMEOUT = 10.0  # a stream that never authenticates is closed (a join takes one round trip)
MAX_STREAMS = 4096
MAX_STREAMS_PER_SOURCE = 64  # a NAT holds many nodes, but few fall back to TCP at once
MAX_UNAUTHENTICATED = 512  # streams not yet a member's: their partial frames stay under 32 MB
STORE_TIMEOUT = 30.0  # an operator's command waits this long for the store
SLICE = 0.01  # the longest the socket holds the loop (a flood of handshakes costs ~1 ms each)


class NodeStream(FramedStream):
    """One node's TCP stream to the relay; it is its own endpoint to the engine."""

    def __init__(self, daemon: "RelayDaemon"):
        super().__init__(daemon)
        self.endpoint = self
        self.opened = 0.0
        self.label = "tcp"
        self.host = "tcp"  # the peer's address: its share of handshakes under load (engine/relay.py)
        self.first = True
        self.work = False  # a node's work connection for a published port (publish_relay.py)
        self.splice = None  # ... once it proved itself

    def connection_made(self, transport):
        super().connection_made(transport)
        d = self.daemon
        self.opened = monotonic()
        peer = transport.get_extra_info("peername")
        self.label = f"tcp:{endpoint.format(peer[:2])}" if peer else "tcp"
        self.host = peer[0] if peer else "tcp"
        d.fresh = {s for s in d.fresh if s in d.streams and not d.engine.bound(s)}  # at most MAX_UNAUTHENTICATED
        if len(d.streams) >= MAX_STREAMS or len(d.fresh) >= MAX_UNAUTHENTICATED:
            d.drops[Drop.TCP_TOO_MANY_STREAMS] += 1
            transport.abort()
            return
        if d.per_source[self.host] >= MAX_STREAMS_PER_SOURCE:
            d.drops[Drop.TCP_TOO_MANY_FROM_SOURCE] += 1
            transport.abort()
            return
        d.streams.add(self)
        d.fresh.add(self)
        d.per_source[self.host] += 1

    def data_received(self, data):
        if self.splice is not None:
            self.splice.sealed_in(data)
        elif self.work or (self.first and is_work(data)):
            self.work = True
            self.daemon.publisher.work(self, data)
        else:
            super().data_received(data)
        self.first = False

    def pause_writing(self):
        if self.splice is not None:
            plain_paused(self.splice, True)

    def resume_writing(self):
        if self.splice is not None:
            plain_paused(self.splice, False)

    def connection_lost(self, exc):
        d = self.daemon
        if self.splice is not None:
            self.splice.lost(self, exc)
            return
        self.count_truncated()
        d.forget_stream(self)
        d.engine.link_closed(self)
        d.after_input()

    def write(self, msg: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if t.get_write_buffer_size() > TCP_WRITE_LIMIT:
            self.daemon.drops[Drop.TCP_BACKPRESSURE] += 1
            return
        self.send_frame(msg)


class StoreWriter:
    """Carries out the engine's writes in order, and tells the engine how each went (written,
    or failed: then the engine takes it back). Registrations waiting together share one
    transaction."""

    def __init__(self, engine: Relay, store):
        self.engine = engine
        self.store = store
        self.wake = asyncio.Event()
        self.done = 0  # writes finished so far, failed ones included
        self.failures: list[tuple[int, str]] = []  # (its number, why) of recent failures
        self._busy = 0  # writes taken from the queue and not yet done
        self._progress = asyncio.Event()

    async def run(self) -> None:
        writes = self.engine.writes
        while True:
            await self.wake.wait()
            self.wake.clear()
            while writes:
                batch = [writes.popleft()]
                # Registrations that queued up while the store was busy (a crowd of nodes
                # joining at once) share one transaction, one fsync.
                while isinstance(batch[0], Register) and writes and isinstance(writes[0], Register) \
                        and len(batch) < self.store.batch_limit:
                    batch.append(writes.popleft())
                self._busy = len(batch)
                try:
                    if len(batch) > 1 and await self._together(batch):
                        continue
                    for write in batch:
                        await self._one(write)
                finally:
                    self._busy = 0
                    self._progress.set()

    async def _together(self, batch: list) -> bool:
        """One transaction for all of them; False if it failed (then each goes on its own,
        so that one bad registration does not hold up the rest)."""
        try:
            await self.store.register_many([(w.record, w.token_id) for w in batch])
        except Exception:
            return False
        self.done += len(batch)
        self._busy = 0
        for write in batch:
            self._tell(self.engine.written, write)
        return True

    async def _one(self, write) -> None:
        try:
            await write.apply(self.store)
        except Exception as exc:  # the store's or the disk's: the engine takes the write back
            why = str(exc) or type(exc).__name__
            self.failures = [*self.failures[-15:], (self.done + 1, why)]
            self._tell(self.engine.failed, write, why)
        else:
            self._tell(self.engine.written, write)
        finally:
            self.done += 1
            self._busy -= 1
            self._progress.set()

    @staticmethod
    def _tell(fn, *args) -> None:
        try:
            fn(*args)
        except Exception:  # a bug: the writer must go on, or no change would be stored again
            log.exception("internal error after a store write")

    async def drained(self, timeout: float = STORE_TIMEOUT) -> str | None:
        """Wait until every write asked for so far is done; why one of them failed, or None."""
        start = self.done
        target = start + len(self.engine.writes) + self._busy
        self.wake.set()
        try:
            await asyncio.wait_for(self._reach(target), timeout)
        except asyncio.TimeoutError:
            return f"the store did not answer within {timeout:.0f} s"
        for number, why in self.failures:
            if start < number <= target:
                return why
        return None

    async def _reach(self, target: int) -> None:
        while self.done < target:
            self._progress.clear()
            await self._progress.wait()


class RelayDaemon(Daemon):
    RESTART_ONLY = ("listen_host", "port", "listen_more", "network", "network6", "state_dir", "auto_approve_routes",
                    "lock", "store", "store_prefix", "store_ca", "store_cert", "store_key", "advertise", "workers")

    def __init__(self, settings: ServeSettings, reread=None):
        super().__init__(reread)
        self.settings = settings
        self.streams: set[NodeStream] = set()
        self.fresh: set[NodeStream] = set()  # streams that had not authenticated when last looked at
        self.per_source: Counter = Counter()  # streams by the peer's address
        self.engine: Relay | None = None
        self.writer: StoreWriter | None = None
        self.sock: socket.socket | None = None
        self.other: socket.socket | None = None  # --listen's address of the other family's UDP socket
        self.batch: Batch | None = None
        self.worker_socks: list[socket.socket] = []
        self.workers: RelayWorkers | None = None
        self.gro = False
        self.backlog = Backlog()  # the relay: only relayed DATA is ever stale
        self.publisher: Publisher | None = None  # published ports (publish_relay.py)
        self._plan = None  # a reload's publishing, checked and bound by check()

    async def run(self) -> tuple[int, str]:
        s = self.settings
        # Bind first: a wrong --listen must fail before anything is written to the state dir.
        udp, tcp = self._bind()
        more = []  # the other family's address, if --listen gives one: (udp, tcp)
        try:
            for host, port in s.listen_more:
                more.append(self._bind_more(host, port))
        except ConfigError:
            for sock in (udp, tcp, *(x for pair in more for x in pair)):
                sock.close()
            self._close_worker_socks()
            raise
        try:  # closing twice is harmless: _serve closes them too when it stops
            state_dir = prepare_dir(s.state_dir)
            if s.store:
                store = open_store(s.store, s.store_prefix, s.store_ca, s.store_cert, s.store_key)
                try:
                    identity = await shared_identity(store, state_dir, s.store)
                except BaseException:
                    await store.close()
                    raise
            else:
                identity = load_identity(state_dir)
                loop = asyncio.get_running_loop()
                try:
                    store = await loop.run_in_executor(None, SqliteStore, os.path.join(state_dir, DB_FILE))
                except StoreError as exc:
                    raise ConfigError(str(exc)) from None
            try:
                return await self._serve(store, identity, state_dir, udp, tcp, more)
            finally:
                await store.close()
        finally:
            for sock in (udp, tcp, *(x for pair in more for x in pair)):
                sock.close()
            self._close_worker_socks()

    def _close_worker_socks(self) -> None:
        for sock in self.worker_socks:  # bound, but no worker started on them
            sock.close()
        self.worker_socks = []

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        s = self.settings
        udp = udp_socket(s.listen_host, s.port, "--listen", reuseport=s.workers > 1)
        # The workers' sockets, bound after ours: ours is the group's first, where all but
        # RELAYED goes (steer.py).
        try:
            for _ in range(s.workers - 1):
                self.worker_socks.append(udp_socket(s.listen_host, s.port, "--listen", reuseport=True))
        except ConfigError:
            udp.close()
            self._close_worker_socks()
            raise
        if self.worker_socks and not steer.attach(udp, s.workers):
            log.warning("the kernel refused the steering program; the relay's workers share by the kernel's hash")
        try:
            tcp = tcp_socket(s.listen_host, s.port)
        except ConfigError:
            udp.close()
            self._close_worker_socks()
            raise
        return udp, tcp

    @staticmethod
    def _bind_more(host: str, port: int) -> tuple[socket.socket, socket.socket]:
        """The other family's UDP and TCP sockets (served by this process: workers share the
        first address's port only)."""
        udp = udp_socket(host, port, "--listen")
        try:
            return udp, tcp_socket(host, port)
        except ConfigError:
            udp.close()
            raise

    async def _network6(self, store, snapshot) -> ipaddress.IPv6Network:
        """The network's IPv6 prefix: --network6, else the one it has, else a new random ULA
        /64, kept from then on (every relay of a shared store takes the first one written)."""
        s = self.settings
        known = snapshot.meta.get("network6")
        want = str(s.network6 or known or overlay6.new_prefix(os.urandom))
        if store.shared:
            known = await store.claim_meta("network6", want)
        elif known is None or (known != want and not snapshot.nodes):
            await store.set_meta("network6", want)
            known = want
        if s.network6 is not None and known != want:
            where = f"the store {s.store}" if store.shared else "this state dir"
            raise ConfigError(f"{where} serves --network6 {known}; run with --network6 {known} or without it "
                              "(nodes' IPv6 addresses would change)")
        return overlay6.parse_prefix(known)

    async def _serve(self, store, identity, state_dir, udp, tcp_sock, more) -> tuple[int, str]:
        s = self.settings
        self.sock = udp
        self.other = more[0][0] if more else None
        try:
            snapshot = await store.load()
        except StoreError as exc:
            raise ConfigError(f"cannot read the store {s.store}: {exc}") from None
        known = snapshot.meta.get("network")
        if store.shared:
            known = await store.claim_meta("network", str(s.network))
            if known != str(s.network):
                raise ConfigError(f"the network in the store {s.store} is {known}; run with --network {known}, "
                                  "or use another --store-prefix for another network")
        else:
            if known is not None and known != str(s.network) and snapshot.nodes:
                raise ConfigError(f"this state dir serves --network {known}, which has nodes; "
                                  f"run with --network {known}, or use a new --state-dir")
            if known != str(s.network):
                await store.set_meta("network", str(s.network))
            if snapshot.meta.get("listen") != s.listen_host:  # for `tunneld routes approve` with no relay running
                await store.set_meta("listen", s.listen_host)
        network6 = await self._network6(store, snapshot)
        self.start_base()
        loop = self.loop
        listen = endpoint.format((s.listen_host, s.port))
        relay_mtu = min(self._underlay_mtu(h) for h, _ in ((s.listen_host, s.port), *s.listen_more))
        if any(":" in h for h, _ in ((s.listen_host, s.port), *s.listen_more)):
            relay_mtu -= IPV6_EXTRA  # nodes over IPv6: the path's header is 20 bytes larger
        if store.shared:
            relay_mtu -= mesh.EXTRA  # a datagram may take one more hop, relay to relay
            listen = s.advertise
        registry = Registry(s.network, snapshot, auto_approve=s.auto_approve_routes, lock=s.lock, network6=network6)
        self.engine = Relay(identity, registry, self._send, real_env(), monotonic(), listen=listen,
                            relay_mtu=relay_mtu)
        if s.lock:
            log.info("the network is locked: only keys endorsed by %s join", format_public(s.lock))
        self.publisher = Publisher(self, state_dir, s.listen_host, s.port)
        added = self.publisher.load_added()
        entries = self.publisher.check(s.publish, added, s.allow_ports)  # a bad one: exit 2, nothing bound
        fresh = self.publisher.bind(entries)
        self.publisher.allow = s.allow_ports
        self.writer = StoreWriter(self.engine, store)
        writer = loop.create_task(self.writer.run())
        shared = SharedStore(self, store, identity, listen) if store.shared else None
        if shared is not None:
            await shared.start()
        self.gro = enable_gro(self.sock)
        other_gro = enable_gro(self.other) if self.other is not None else False
        v4, v6 = ((self.sock, self.other) if self.sock.family == socket.AF_INET else (self.other, self.sock))
        self.stats = Counter()
        self.batch = Batch(v4 or self.sock, self.drops, self.stats, relay_mtu - UDP_OVERHEAD_IPV4, lanes=True,
                           sock6=v6)
        servers = [await loop.create_server(lambda: NodeStream(self), sock=t, backlog=1024)
                   for t in (tcp_sock, *(tcp for _, tcp in more))]
        await self.publisher.apply(entries, fresh, configured=s.publish, added=added)
        self.scrape = await metrics_http.start(s.metrics, self.status_now)
        ctl = await ctlsock.serve(os.path.join(state_dir, SOCKET_FILE), self._control)
        loop.add_reader(self.sock.fileno(), self._on_udp, self.sock, self.gro)
        if self.other is not None:
            loop.add_reader(self.other.fileno(), self._on_udp, self.other, other_gro)
        if self.worker_socks:
            self.workers = RelayWorkers(self.worker_socks, relay_mtu)
            self.worker_socks = []
            self.workers.start(loop, self)
        log.info("relay listening on %s (UDP and TCP), network %s and %s, key %s",
                 ", ".join(endpoint.format(a) for a in ((s.listen_host, s.port), *s.listen_more)), s.network,
                 network6, identity.public.hex())
        notify("READY=1\nSTATUS=relay listening on " + listen)
        try:
            return await self.wait()
        finally:
            notify("STOPPING=1")
            if self.workers is not None:
                self.workers.close()
            loop.remove_reader(self.sock.fileno())
            if self.other is not None:
                loop.remove_reader(self.other.fileno())
            self.stop_base()
            ctl.close()
            for server in servers:
                server.close()
            self.publisher.close()
            for stream in list(self.streams):
                stream.transport.abort()
            self.sock.close()
            self.engine.flush_seen()
            failed = await self.writer.drained(10.0)
            if failed:
                log.error("not every change reached the store before stopping: %s", failed)
            writer.cancel()
            if shared is not None:
                await shared.stop()
            try:
                os.unlink(os.path.join(state_dir, SOCKET_FILE))
            except OSError:
                pass

    @staticmethod
    def _underlay_mtu(host: str) -> int:
        """The relay's own link MTU, one of the paths the overlay MTU must fit."""
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

    def _on_udp(self, sock: socket.socket, gro: bool) -> None:
        """The relay's hot path: read (GRO trains cut apart) -> engine.receive rewrites the
        4-byte address field and sends on -> a train to one node leaves in one sendmsg (by
        the socket of the node's family: the relay bridges IPv4 and IPv6)."""
        now = monotonic()
        deadline = now + SLICE
        receive = self.engine.receive
        batch = self.batch
        batch.active = True
        try:
            for datagrams, addr in udp_reads(sock, gro, self.drops, self.stats, READ_BATCH, self.backlog):
                for data in datagrams:
                    try:
                        receive(data, addr, now)
                    except Exception:  # inlined Daemon.receive: this loop is the relay's hot path
                        self.internal_error()
                if monotonic() > deadline:
                    break  # the rest waits a turn: the store's answers and the timers get theirs
        finally:
            batch.active = False
            batch.flush()
        self.after_input()

    def after_input(self) -> None:
        if self.engine is not None and self.engine.writes:
            self.writer.wake.set()
        if self.workers is not None:
            self.workers.sync()  # a join or a move changes what the workers forward

    def tick(self, now: float) -> None:
        self.engine.tick(now)
        self.publisher.engine.tick(now)
        for stream in list(self.streams):
            if not self.engine.bound(stream) and now - stream.opened > TCP_AUTH_TIMEOUT \
                    and not stream.transport.is_closing():
                self.drops[Drop.TCP_UNAUTHENTICATED_TIMEOUT] += 1
                stream.transport.abort()  # connection_lost forgets it

    def forget_stream(self, stream: NodeStream) -> None:
        """stream closed, or is a work connection now (publish_relay.py): not a node's stream."""
        if stream in self.streams:
            self.streams.discard(stream)
            self.fresh.discard(stream)
            self.per_source[stream.host] -= 1
            if self.per_source[stream.host] <= 0:
                del self.per_source[stream.host]

    def check(self, new) -> None:
        p = self.publisher
        entries = p.check(new.publish, p.added, new.allow_ports)
        self._plan = (entries, p.bind(entries), new.publish, new.allow_ports)

    def changed(self, old, new) -> list[str]:
        entries, fresh, configured, allow = self._plan
        self._plan = None
        if configured == old.publish and allow == old.allow_ports:
            return []
        self.publisher.allow = allow
        self.loop.create_task(self.publisher.apply(entries, fresh, configured=configured))
        return ["publish"]

    def _control(self, request: dict):
        cmd = request.get("cmd")
        if cmd == "publish-add" and isinstance(request.get("publish"), dict):
            return self.publisher.add(request["publish"])
        if cmd == "publish-remove" and isinstance(request.get("name"), str):
            return self.publisher.remove(request["name"])
        if cmd == "status":
            status = self.engine.status(monotonic())
            status["store"] = {"kind": "etcd" if self.writer.store.shared else "sqlite",
                               "problem": self.engine.registry.unavailable or None}
            w = self.workers
            status["drops"] = self.all_drops(status["drops"] if w is None else Counter(status["drops"]) + w.drops)
            status["tcp_streams"] = len(self.streams)
            status["tasks"] = len(asyncio.all_tasks())
            status["offload"] = {"aead": aead.KIND, "udp_gso": self.batch.gso, "udp_gro": self.gro,
                                 **(self.stats if w is None else self.stats + w.stats)}
            status["workers"] = [] if w is None else w.status()
            status["published"] = self.publisher.rows()
            return status
        if cmd in ("revoke", "token", "approve-route", "unapprove-route", "revoke-token") \
                and self.engine.registry.unavailable:
            return {"error": f"the relay cannot reach its store ({self.engine.registry.unavailable}); "
                             "try again once it is back"}
        if cmd == "revoke" and isinstance(request.get("name"), str):
            if not self.engine.revoke(request["name"]):
                return {"error": f"no node named {request['name'][:64]!r} with a key on this relay"}
            return self._stored({"ok": True})
        if cmd == "token" and (request.get("ttl") is None or isinstance(request.get("ttl"), (int, float))):
            uses = request.get("uses", 1)  # a 0.2.0 command line sends none: one node, the new default
            if not isinstance(uses, int) or isinstance(uses, bool) or uses < 0:
                return {"error": "uses must be a whole number, 0 for any"}
            return self._stored({"token": self.engine.issue_token(request.get("ttl"), uses)})
        if cmd == "routes":
            return {"routes": self.engine.route_rows()}
        if cmd in ("approve-route", "unapprove-route") and isinstance(request.get("name"), str) \
                and isinstance(request.get("prefix"), str):
            if cmd == "unapprove-route":
                if not self.engine.unapprove_route(request["name"], request["prefix"]):
                    return {"error": f"{request['prefix'][:24]} is not approved for {request['name'][:64]!r}; "
                                     "see 'tunneld routes list'"}
                return self._stored({"ok": True})
            try:
                self.engine.approve_route(request["name"], request["prefix"])
            except ApprovalError as exc:
                return {"error": str(exc)}
            return self._stored({"ok": True})
        if cmd == "tokens":
            return {"tokens": self.engine.token_rows()}
        if cmd == "revoke-token" and isinstance(request.get("id"), str):
            try:
                token_id = bytes.fromhex(request["id"])
            except ValueError:
                token_id = b""
            if not self.engine.revoke_token(token_id):
                return {"error": f"no valid token with ID {request['id'][:40]}; see 'tunneld token --list'"}
            return self._stored({"ok": True})
        return {"error": f"unknown command {str(cmd)[:40]!r}"}

    async def _stored(self, answer: dict) -> dict:
        """The answer, once the store holds what the command changed."""
        failed = await self.writer.drained()
        if failed:
            return {"error": f"the change is in effect on the running relay but not stored: {failed}"}
        return answer
