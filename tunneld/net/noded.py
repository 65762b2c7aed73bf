"""`tunneld join`: the node engine between the TUN device, the UDP socket and the relay.

Start-up order, because kubelet depends on it:
  1. key, token and the route to the relay (which must not use the overlay);
  2. the TUN device (persistent; re-attached if it exists);
  3. if the state dir remembers an address from this relay, configure it and tell
     systemd READY at once, before the relay answers (the relay may be down);
  4. otherwise READY follows the relay's first answer.
The node then reconnects forever; only a refusal (exit 3) or a signal ends it.

The engine's host changes (engine/effects.py) are carried out in order on a thread of
their own, never inside the receive loop: netlink, nft and fsync may take their time
while packets keep flowing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import shutil
import socket
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from time import monotonic

from ..config import JoinSettings
from ..control.registry import RouteError, check_routes
from ..drops import Drop
from ..engine import effects as fx
from ..engine.inner import IPV6_EXTRA
from ..engine.node import Node, NodeConfig
from ..engine.routes import OVERHEAD
from ..errors import EXIT_FAILURE, EXIT_REFUSED, ConfigError, HostError
from ..host import nat, spread
from ..logs import event
from ..host.cpu import has_aes
from ..host.links import Links
from ..host.notify import notify
from ..host.tun import OFFLOADS, Tun
from ..kube import flannel_subnet
from ..proto import aead, endpoint, lock, wire
from ..proto.endpoint import RELAY
from ..proto.token import JoinToken, TokenError
from ..state import NODE_FILE, SOCKET_FILE, load_identity, load_node_state, prepare_dir, save_node_state
from . import ctlsock, metrics_http, steer
from .base import Daemon, FramedStream, real_env, udp_socket
from .dataplane import DataPlane
from .admission import Admission, Enforce, peers_of
from .express import NodeSource
from .node_workers import NodeWorkers
from .publish_node import PUBLISHING, Serving

log = logging.getLogger("tunneld.node")

MIN_MTU = wire.MIN_OVERLAY_MTU
TCP_CONNECT_TIMEOUT = 5.0
TCP_QUEUE = 256
SUBNET_ENV_EVERY = 5.0  # seconds between looks at flannel's subnet.env (--pod-cidr FILE)


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


def resolvers(path: str = "/etc/resolv.conf") -> list[tuple[str, str]]:
    """The host's IPv4 name servers, as (what, prefix): the overlay must not take them."""
    out = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:  # a damaged file must not stop a node
            for line in f:
                words = line.split()
                if len(words) >= 2 and words[0] == "nameserver":
                    try:
                        out.append((f"the resolver {ipaddress.IPv4Address(words[1])} in {path}", f"{words[1]}/32"))
                    except ValueError:
                        pass  # IPv6, or not an address: not ours to judge
    except OSError:
        pass
    return out


class NodeDaemon(Daemon):
    RESTART_ONLY = ("relay_host", "relay_ip", "relay_port", "name", "interface", "state_dir", "port", "snat_routes",
                    "relays", "pod_cidr", "workers")

    def __init__(self, settings: JoinSettings, reread=None):
        super().__init__(reread)
        self.settings = settings
        self.engine: Node | None = None
        self.tun: Tun | None = None
        self.links: Links | None = None
        self.sock: socket.socket | None = None
        self.sock6: socket.socket | None = None  # IPv6 paths: the relay's, and peers' (the engine's own)
        self.ipv6 = False  # an IPv6 socket and a route for it off this host
        self.relay_addr = (settings.relay_ip, settings.relay_port)
        self.relay_label = endpoint.format(self.relay_addr)
        self.ready = False
        self.use_tcp = False
        self.stream: RelayStream | None = None
        self.state_dir = ""
        self.plane: DataPlane | None = None
        self.workers: NodeWorkers | None = None
        self.spread = False  # host/spread.py's program steers tunneld0's flows over the workers
        self._host = ThreadPoolExecutor(1, thread_name_prefix="host")
        self._host_queue: deque = deque()
        self._host_wake: asyncio.Event | None = None
        # --pod-cidr: our pod network, advertised and never masqueraded; a file is followed
        given = settings.pod_cidr
        self.pods: tuple[str, ...] = (given,) if given and not given.startswith("/") else ()
        self._subnet_env = (None, 0.0)  # (what we read, when we look next)
        self.admission = Admission(settings.interface)  # the policy file at work (--policy)
        self.serving = Serving(self)  # the ports the relay publishes of ours (publish_node.py)

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
            self._host.shutdown(wait=True)  # (it may be writing the policy)
            self.links.close()
            try:
                self.admission.stop()
            except HostError as exc:
                log.warning("%s", exc)

    async def _run(self, identity, token: JoinToken) -> tuple[int, str]:
        s = self.settings
        route = self.links.route_to(s.relay_ip)
        if route.ifname == s.interface:
            raise ConfigError(f"the route to the relay {s.relay_ip} goes through {s.interface} itself; "
                              "the relay must be reachable without the overlay")
        if route.mtu - IPV6_EXTRA - OVERHEAD < MIN_MTU:
            raise HostError(f"the path to the relay has an MTU of {route.mtu}, too small for a tunnel")
        self.admission.start(s.policy)  # before tunneld0 carries anything
        remembered = load_node_state(self.state_dir, token.relay_public)
        assignment = mtu = None
        if remembered is not None:
            assignment = remembered.assignment
            if remembered.mtu is not None and remembered.mtu <= route.mtu - OVERHEAD:
                mtu = remembered.mtu  # the overlay's, as last known: pods may already use it
        offload = os.environ.get("TUNNELD_OFFLOAD", "all")
        if offload not in OFFLOADS:
            raise ConfigError(f"TUNNELD_OFFLOAD={offload[:20]!r}: use {', '.join(OFFLOADS)}")
        self.tun = Tun.open(s.interface, offload=offload, queues=s.workers)
        if s.workers > 1 and not self.tun.multiqueue:
            log.warning("%s was made with one queue (by tunneld 0.3.0 or before): running 1 worker, not %d; "
                        "to use them, stop the node, 'ip link del %s', and start it again",
                        s.interface, s.workers, s.interface)
        if not self.tun.tunnel and offload == "all":
            log.info("the kernel hands VXLAN over %s packet by packet (no UDP-tunnel offload on TUN)", s.interface)
        self.start_base()
        loop = self.loop
        self._host_wake = asyncio.Event()
        host_worker = loop.create_task(self._host_worker())
        try:
            self.sock = udp_socket("0.0.0.0", s.port, "--port", reuseport=bool(self.tun.queues))
            self.sock6 = self._socket6(self.sock.getsockname()[1], reuseport=bool(self.tun.queues))
            lan = self._lan_endpoints(route.ifname, self.sock.getsockname()[1])
            if self.sock6 is not None or ":" in s.relay_ip:
                route = self._underlay6(route, lan)
                if mtu is not None and mtu > route.mtu - OVERHEAD:
                    mtu = None
            # The relay first: node.py checks it lies outside the overlay.
            others = tuple(endpoint.parse(r)[0] for r in s.relays[1:])
            protected = (s.relay_ip, *others, *([route.gateway] if route.gateway else []),
                         *self.links.connected_networks(s.interface))
            chain, pinned, known = self._lock(identity, token, remembered, s.name)
            self._follow_subnet_env(monotonic(), start=True)
            config = NodeConfig(s.name, token.credential, wire.SUITE_AESGCM if has_aes() else wire.SUITE_CHACHAPOLY,
                                route.mtu, mtu, assignment, s.advertise_routes + self.pods, s.accept_routes,
                                protected, lan,
                                self.relay_label, chain=chain, lock=pinned, known_keys=known,
                                host_claims=(*self.links.claims(s.interface), *resolvers()),
                                relays=s.relays or (self.relay_label,), ipv6=self.ipv6)
            self.engine = Node(identity, token.relay_public, config, self, real_env(), monotonic())
            self._start_workers(route.mtu)
            self.plane = DataPlane(self.tun.fd, self.tun.tunnel, self.sock, route.mtu, self.drops, self.internal_error,
                                   self.sock6)
            source = NodeSource(self.engine, lambda: self.workers.count if self.workers else 1,
                                lambda: None if self.use_tcp else self.relay_addr, self.after_input,
                                self.internal_error)
            on_tun, on_udp = self.plane.use_express(source, self._on_tun, self._on_udp) or (self._on_tun, self._on_udp)
            self.plane.relay_is(self.relay_addr)
            self.after_input()  # a remembered address goes on the interface now
            self.scrape = await metrics_http.start(s.metrics, self.status_now)
            ctl = await ctlsock.serve(os.path.join(self.state_dir, SOCKET_FILE), self._control)
            loop.add_reader(self.sock.fileno(), on_udp)
            if self.sock6 is not None:
                loop.add_reader(self.sock6.fileno(), partial(self._on_udp, sock=self.sock6))
            loop.add_reader(self.tun.fd, on_tun)
            log.info("joining relay %s as %s via %s (underlay MTU %d)",
                     self.relay_label, s.name, route.ifname, route.mtu)
            self.engine.tick(monotonic())
            self.after_input()
            try:
                code, message = await self.wait()
            finally:
                notify("STOPPING=1")
                if self.engine.connected and code == 0:
                    self.engine.bye()
                loop.remove_reader(self.sock.fileno())
                if self.sock6 is not None:
                    loop.remove_reader(self.sock6.fileno())
                loop.remove_reader(self.tun.fd)
                if self.workers is not None:
                    self.workers.close()
                self.stop_base()
                self.serving.close()
                ctl.close()
                try:
                    os.unlink(os.path.join(self.state_dir, SOCKET_FILE))
                except OSError:
                    pass
            return code, message
        finally:
            host_worker.cancel()
            if self.stream is not None and self.stream.transport is not None:
                self.stream.transport.abort()
            for sock in (self.sock, self.sock6):
                if sock is not None:
                    sock.close()
            self.tun.close()  # the interface persists, with its address and routes

    # -- Transmit: what the engine sends, at once -----------------------------------------

    def send(self, ep, data: bytes) -> None:
        w = self.workers
        if w is not None and w.version != self.engine.table.version:
            # A handshake's answer, or the first DATA on new keys, lets the peer use a new
            # session: our workers get it first, or the peer's next data finds them without it.
            w.sync()
        if ep is RELAY:
            if self.use_tcp:
                self._stream().write(data)
                return
            ep = self.relay_addr
        self.plane.batch.send(data, ep)

    def write_tun(self, packet: bytes) -> None:
        self.plane.write_tun(packet)

    def relay_endpoint(self, address: str) -> None:
        self.relay_addr = endpoint.parse(address)  # the link passes only addresses that parse
        self.relay_label = address
        if self.plane is not None:
            self.plane.relay_is(self.relay_addr)
        if self.stream is not None:  # a TCP stream goes to the old relay
            if self.stream.transport is not None:
                self.stream.transport.abort()
            self.stream = None
        if self.workers is not None:
            self.workers.sync(force=True)

    def relay_transport(self, tcp: bool) -> None:
        if tcp == self.use_tcp:
            return
        self.use_tcp = tcp
        if self.plane is not None:
            self.plane.relay_is(self.relay_addr)  # the express path's tables follow (relayed: UDP only)
        log.info("trying the relay over %s", "TCP" if tcp else "UDP")
        if not tcp and self.stream is not None:
            if self.stream.transport is not None:
                self.stream.transport.close()
            self.stream = None
        if self.workers is not None:
            self.workers.sync(force=True)

    def receive(self, data: bytes, ep, now: float) -> None:
        """From the relay's TCP stream: DATA in a worker's lane is that worker's to open."""
        if self.workers is not None:
            try:
                self.workers.receive(data, ep, now)
            except Exception:
                self.internal_error()
        else:
            super().receive(data, ep, now)

    # -- effects: what the engine asks of the host, in order, off the receive path --------

    def after_input(self) -> None:
        engine = self.engine
        if self.workers is not None and engine is not None:
            self.workers.sync()
        if engine is None or not engine.effects:
            return
        peers_changed = False
        for effect in engine.take_effects():
            if isinstance(effect, fx.Stop):
                self._stop(effect)
                return
            if isinstance(effect, PUBLISHING):
                self.serving.carry(effect)
                continue
            self._host_queue.append(effect)
            peers_changed = peers_changed or isinstance(effect, fx.SetRoutes)
        if peers_changed and self.admission.wanted is not None:
            self._enforce(self.admission.wanted)
        self._host_wake.set()

    def _enforce(self, policy) -> None:
        """The policy, for the peers as they are now, to the host thread (if that changes anything)."""
        change = self.admission.want(policy, peers_of(self.engine) if self.engine is not None else {})
        if change is not None:
            self._host_queue.append(change)
            self._host_wake.set()

    def _stop(self, effect: fx.Stop) -> None:
        if effect.exit_code == EXIT_REFUSED:
            self.finish(EXIT_REFUSED, f"refused by the relay at {self.relay_label}: {effect.message}")
        else:
            self.finish(effect.exit_code, effect.message)

    async def _host_worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._host_wake.wait()
            self._host_wake.clear()
            while self._host_queue:
                effect = self._host_queue.popleft()
                try:
                    said = await loop.run_in_executor(self._host, self._apply, effect)
                except HostError as exc:
                    if isinstance(effect, fx.SetAddress):  # without its address the node is no use
                        self.finish(EXIT_FAILURE, str(exc))
                        return
                    log.error("%s", exc)
                    continue
                except OSError as exc:
                    log.error("cannot write %s: %s", os.path.join(self.state_dir, "node.json"), exc)
                    continue
                if said:  # the interface's address, MTU or routes changed: what changed, in words
                    log.info("%s", said, extra=event("host", change=type(effect).__name__))
                if isinstance(effect, fx.SetAddress) and not self.ready:
                    self.ready = True
                    notify(f"READY=1\nSTATUS={self.settings.interface} {effect.interface.ip}")

    def _apply(self, effect) -> str:
        """On the host thread: one change to the host; what it did, for the log."""
        s = self.settings
        if isinstance(effect, fx.SetAddress):
            v6 = self.links.configure(s.interface, effect.interface, effect.mtu, effect.interface6)
            if effect.interface6 is not None and not v6:
                log.warning("%s has no IPv6 overlay address: IPv6 needs an MTU of 1280, and the overlay's is %d",
                            s.interface, effect.mtu)
            six = f" and {effect.interface6}" if v6 else ""
            return f"{s.interface} is up with {effect.interface}{six}, MTU {effect.mtu}"
        if isinstance(effect, fx.SetMtu):
            self.links.set_mtu(s.interface, effect.mtu)
            return f"{s.interface} MTU is now {effect.mtu}"
        if isinstance(effect, fx.SetRoutes):
            self.links.set_routes(s.interface, list(effect.prefixes))
            return f"routes through {s.interface}: {', '.join(effect.prefixes) or 'none'}"
        if isinstance(effect, fx.SetGateway):
            return self._gateway(effect)
        if isinstance(effect, Enforce):
            return self.admission.apply(effect)
        if isinstance(effect, fx.SaveState):
            save_node_state(self.state_dir, effect.relay_key, self.relay_label, effect.assignment, effect.mtu,
                            effect.lock, effect.known)
            return ""
        raise HostError(f"unknown effect {effect!r}")

    @staticmethod
    def _lock(identity, token: JoinToken, remembered, name: str) -> tuple:
        """(our chain, the lock we pin, the peer keys we remember) for NodeConfig. An endorsed
        token pins its lock; once pinned (node.json), a lock stays pinned."""
        e = token.endorsement
        pinned = remembered.lock if remembered is not None else None
        if e is not None and pinned is not None and pinned != e.lock_public:
            raise ConfigError("the token is endorsed by another network lock than the one this node pinned; "
                              f"delete {NODE_FILE} in the state dir only if the network's lock was replaced")
        chain = None if e is None else lock.chain(e.lock_public, token.token_id, e.enroll_seed, e.sig1,
                                                  identity.public, name)
        return chain, (e.lock_public if e is not None else pinned), (remembered.known if remembered else ())

    def _gateway(self, effect: fx.SetGateway) -> str:
        """As a gateway into the advertised prefixes: forwarding on, overlay traffic masqueraded."""
        if effect.prefixes:
            said = []
            for v6 in {":" in p for p in effect.prefixes}:
                if nat.enable_forwarding(v6):
                    said.append(f"turned on IPv{6 if v6 else 4} forwarding for the advertised routes")
            # pods keep their addresses; IPv6 prefixes too (routed, never masqueraded: the
            # network behind routes the overlay's IPv6 prefix back through this node)
            masqueraded = [p for p in effect.prefixes if p not in self.pods and ":" not in p]
            if self.settings.snat_routes and masqueraded:
                nat.masquerade(effect.network, masqueraded, self.settings.interface)
                said.append(f"masquerading overlay traffic into {', '.join(masqueraded)}")
            return "; ".join(said)
        if shutil.which("nft"):
            nat.remove()  # a rule left from a run that advertised routes
        return ""

    # -- adapters ------------------------------------------------------------------------

    def _start_workers(self, mtu: int) -> None:
        """--workers N: N - 1 more lanes, each on a queue of tunneld0 and a socket of our port."""
        queues, self.tun.queues = self.tun.queues, []
        if not queues:
            return
        port = self.sock.getsockname()[1]
        socks = [udp_socket("0.0.0.0", port, "--port", reuseport=True) for _ in queues]
        socks6 = self._worker_socks6(len(queues))
        if steer.attach(self.sock, len(queues) + 1, node=True):
            self.workers = NodeWorkers(socks, queues, self.tun.tunnel, mtu, socks6)
        else:
            log.warning("the kernel refused the steering program (SO_ATTACH_REUSEPORT_CBPF): running 1 worker")
        for fd in queues:
            os.close(fd)  # the workers' now, or nobody's
        for sock in (*socks, *socks6):
            sock.close()
        if self.workers is None:
            return
        self.workers.start(self.loop, self)
        log.info("%d workers carry the data, each on a queue of %s", self.workers.count, self.settings.interface)
        try:
            spread.attach(self.tun.fd)
            self.spread = True
        except OSError as exc:
            log.warning("the kernel refused the flow-steering program for %s (%s): flows go to the workers "
                        "by their hash", self.settings.interface, exc)

    def _worker_socks6(self, count: int) -> list[socket.socket]:
        """The workers' IPv6 sockets, steered by lane as the IPv4 ones (none: IPv6 peers stay
        with the node's own process)."""
        if self.sock6 is None or not self.ipv6:
            return []
        socks = []
        try:
            for _ in range(count):
                socks.append(udp_socket("::", self.sock6.getsockname()[1], "--port", reuseport=True))
            if steer.attach(self.sock6, count + 1, node=True):
                return socks
        except ConfigError as exc:
            log.warning("no IPv6 sockets for the workers (%s): IPv6 peers stay with the node's process", exc)
        for sock in socks:
            sock.close()
        return []

    def _socket6(self, port: int, reuseport: bool) -> socket.socket | None:
        """Our IPv6 socket, on our IPv4 socket's port where it is free; None on a host without
        IPv6. reuseport: the first of a group, the workers' after it (as the IPv4 one)."""
        for p in dict.fromkeys((port, 0)):
            try:
                return udp_socket("::", p, "--port", reuseport=reuseport)
            except (ConfigError, OSError):
                continue
        log.info("no IPv6 socket on this host: peers and relays are reached over IPv4 only")
        return None

    def _lan_endpoints(self, underlay: str, port: int) -> tuple[str, ...]:
        """Where peers may reach us directly besides what the relay sees: the underlay
        interface's IPv4 addresses (our LAN's neighbours), and the global IPv6 addresses of
        the interface IPv6 leaves by (no NAT in the way). Only those interfaces': an address
        routed over the overlay itself, cni0's say, must never become a direct path."""
        out = []
        for iface in self.links.addresses(underlay):
            if not (iface.ip.is_loopback or iface.ip.is_link_local):
                out.append(f"{iface.ip}:{port}")
        if self.sock6 is not None:
            port6 = self.sock6.getsockname()[1]
            try:
                out6 = self.links.route_to(self.settings.relay_ip if ":" in self.settings.relay_ip else "2000::")
            except HostError:
                out6 = None  # no IPv6 route off this host
            if out6 is not None and out6.ifname != self.settings.interface:
                self.ipv6 = True
                out += [endpoint.format((str(a), port6)) for a in self.links.addresses6(out6.ifname)]
        return tuple(out[:8])

    def _underlay6(self, route, lan: tuple[str, ...]):
        """Our underlay MTU as the overlay must count it: 20 bytes less where a path of ours may
        be IPv6 (to the relay, or a peer reaching an IPv6 address of ours), its header being
        that much larger than IPv4's; the overlay MTU then fits either."""
        if ":" in self.settings.relay_ip or any(ep.startswith("[") for ep in lan):
            return replace(route, mtu=route.mtu - IPV6_EXTRA)
        return route

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
            self.drops[Drop.TCP_CONNECT_FAILED] += 1

    def stream_lost(self, stream: RelayStream) -> None:
        if stream is self.stream:
            self.stream = None
            if self.use_tcp:
                self.engine.transport_lost(monotonic())

    def _on_udp(self, first=None, now: float = 0.0, sock=None) -> None:
        """The socket's reads (from first, one the express path handed back); sock: the IPv6
        socket's, always on this Python path (the express path reads IPv4 only)."""
        w = self.workers
        self.plane.on_udp(self.engine.receive if w is None else w.receive, self.relay_addr, first, now, sock)
        if self.engine.effects:
            self.after_input()

    def _on_tun(self, first=None, now: float = 0.0) -> None:
        self.plane.on_tun(self.engine.from_tun_train, first, now)
        if self.engine.effects:
            self.after_input()

    def tick(self, now: float) -> None:
        self.engine.tick(now)
        self.serving.tick(now)
        if now >= self._subnet_env[1]:
            self._follow_subnet_env(now)

    def _follow_subnet_env(self, now: float, start: bool = False) -> None:
        """--pod-cidr FILE: flannel writes the pod CIDR it leased us there, after tunneld0 is up
        (it needs it); when the lease appears or changes, the relay hears of it at once."""
        path = self.settings.pod_cidr
        if not path.startswith("/"):
            return
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                found = flannel_subnet(f.read(4096))
        except OSError:
            found = None
        seen = self._subnet_env[0]
        self._subnet_env = (found, now + SUBNET_ENV_EVERY)
        if found == seen or found is None:
            return
        # Checked here as the relay checks it: a prefix it would refuse must not end the node.
        a = self.engine.assignment if self.engine is not None else None
        try:
            overlay = ipaddress.IPv4Network(a.network) if a is not None else None
            pods = tuple(p for p in check_routes((found,), overlay) if p not in self.settings.advertise_routes)
        except RouteError as exc:
            log.error("%s names a pod network tunneld cannot route, keeping %s: %s", path,
                      ", ".join(self.pods) or "none", exc)
            return
        log.info("pod network %s (from %s) is routed through the overlay", found, path)
        self.pods = pods
        if not start:
            self.engine.advertise(self.settings.advertise_routes + pods, now)
            self.after_input()

    def changed(self, old, new) -> list[str]:
        """A reload's routes: advertised ones go to the relay in the link's next handshake
        (peers' sessions are untouched); accepting peers' prefixes turns on or off."""
        out = []
        if new.advertise_routes != old.advertise_routes:
            self.engine.advertise(new.advertise_routes + self.pods, monotonic())
            out.append("advertise_routes")
        if new.accept_routes != old.accept_routes:
            self.engine.accept(new.accept_routes)
            out.append("accept_routes")
        if new.policy != old.policy:
            self._enforce(new.policy)
            out.append("policy")
        if out:
            self.after_input()
        return out

    def _control(self, request: dict) -> dict:
        if request.get("cmd") == "status":
            status = self.engine.status()
            status["interface"] = self.settings.interface
            status["ready"] = self.ready
            w = self.workers
            status["drops"] = self.all_drops(Counter(status["drops"]) + (w.drops if w else Counter()))
            self.plane.fold_express()
            status["offload"] = {"aead": aead.KIND, "express": self.plane.express is not None, "spread": self.spread,
                                 "tun": self.tun.offload, "tun_udp_tunnel": self.tun.tunnel,
                                 "udp_gso": self.plane.batch.gso, "udp_gro": self.plane.gro,
                                 **(self.plane.stats + (w.stats if w else Counter()))}
            status["workers"] = [{"worker": 0, "pid": os.getpid(), "running": True}] + (w.status() if w else [])
            status["published"] = self.engine.publishing.status()
            admitted = self.admission.status(peers_of(self.engine))
            if admitted is not None:
                status["policy"] = admitted
                status["drops"][Drop.POLICY_DENIED] = admitted["denied_packets"]
            return status
        return {"error": f"unknown command {str(request.get('cmd'))[:40]!r}"}
