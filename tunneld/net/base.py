"""What both daemons share: the event loop, the UDP socket, signals, the tick, and the
real clocks and randomness the engines are given.

Times handed to the engines come from time.monotonic(): uvloop's loop.time()
counts whole milliseconds, too coarse to measure a round trip on a LAN.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections import Counter
from dataclasses import replace
from time import monotonic

from .. import logs
from ..drops import Drop
from ..engine.effects import Env
from ..errors import TunneldError, bind_error
from ..logs import event
from ..proto import aead
from ..proto.errors import ProtocolError
from ..proto.framing import Deframer, frame
from . import metrics_http

log = logging.getLogger("tunneld")

SOCKET_BUFFER = 4 << 20
IP_MTU_DISCOVER = 10  # <linux/in.h>; Python's socket module does not always export these
IP_PMTUDISC_DONT = 0
IPV6_MTU_DISCOVER = 23  # <linux/in6.h>
TICK = 0.25
READ_BATCH = 256  # messages per readiness callback, so one busy socket cannot starve the others


def real_env() -> Env:
    """The machine's clocks, and the kernel's cryptographic randomness."""
    return Env(time.monotonic, time.time_ns, os.urandom)


def run(coro):
    """Run on uvloop (the hot path's loop), or on plain asyncio where it is missing; with our
    AEAD unless TUNNELD_NATIVE=0 (proto/aead.py)."""
    aead.choose(os.environ.get("TUNNELD_NATIVE", "1") != "0")
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def udp_socket(host: str, port: int, option: str, reuseport: bool = False) -> socket.socket:
    """reuseport: one of several sockets on the port (the relay's workers, net/steer.py).
    An IPv6 host (it holds colons) makes an IPv6-only socket: IPv4 has a socket of its own."""
    v6 = ":" in host
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # No DF on the outer packets: should a path be smaller than the overlay MTU assumes (a
    # smaller node just joined), routers fragment rather than drop, and nothing stalls.
    # (IPv6 routers never fragment: the sender does, to the link's MTU.)
    if v6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IP_PMTUDISC_DONT)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
    socket_buffers(sock, SOCKET_BUFFER)
    return bound(sock, host, port, "UDP", option)


def tcp_socket(host: str, port: int, option: str = "--listen") -> socket.socket:
    """A TCP socket bound (not listening yet) to host:port, of host's family (IPv6 only)."""
    v6 = ":" in host
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if v6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return bound(sock, host, port, "TCP", option)


def bound(sock: socket.socket, host: str, port: int, proto: str, option: str) -> socket.socket:
    """sock bound to host:port; closed, and a ConfigError naming option, where it cannot be."""
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise bind_error(exc, host, port, proto, option) from None
    return sock


def socket_buffers(sock: socket.socket, size: int) -> None:
    """Receive and send buffers of size bytes: beyond the system's limit as root (SO_*BUFFORCE),
    up to it otherwise."""
    for opt, force in ((socket.SO_RCVBUF, 33), (socket.SO_SNDBUF, 32)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)


class FramedStream(asyncio.Protocol):
    """A TCP stream of framed messages (proto/framing.py) between a node and the relay.

    Received messages go to the daemon's engine as coming from `endpoint`; a stream
    that breaks the framing is cut at once.
    """

    endpoint = None

    def __init__(self, daemon: "Daemon"):
        self.daemon = daemon
        self.transport: asyncio.Transport | None = None
        self.deframer = Deframer()

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        d = self.daemon
        try:
            frames = self.deframer.feed(data)
        except ProtocolError:
            d.drops[Drop.TCP_BAD_FRAMING] += 1
            self.transport.abort()
            return
        now = monotonic()
        for msg in frames:
            d.receive(msg, self.endpoint, now)
        d.after_input()

    def send_frame(self, msg: bytes) -> None:
        self.transport.write(frame(msg))

    def count_truncated(self) -> None:
        """At close: a frame begun and never finished is a drop like any other."""
        if self.deframer.pending:
            self.daemon.drops[Drop.TCP_TRUNCATED_FRAME] += 1


class Daemon:
    """A stop future, signal handlers, a periodic tick and reloading the config on SIGHUP;
    subclasses fill in the rest.

    Reload: reread() gives the settings the command line and the config file say now (the
    CLI's own checks: a bad file raises ConfigError, and the running config stays); the log
    level and format and the metrics address change here, a subclass's changed() the rest
    it can change running (routes); what only a restart changes is kept, and said."""

    RESTART_ONLY: tuple[str, ...] = ()  # settings a reload cannot change

    def __init__(self, reread=None):
        self.loop: asyncio.AbstractEventLoop | None = None
        self.engine = None  # the sans-IO engine
        self.drops: Counter = Counter()  # what the daemon itself dropped: sockets, streams, the TUN
        self._done: asyncio.Future | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self.reread = reread
        self.scrape: asyncio.AbstractServer | None = None  # --metrics (metrics_http.py)

    def start_base(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._done = self.loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.finish, 0, "")
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)
        self._ticker = self.loop.call_later(TICK, self._tick)

    def reload(self) -> None:
        if self.reread is None:
            return
        try:
            new = self.reread()
        except TunneldError as exc:
            log.error("reload refused, the running config stays: %s", exc,
                      extra=event("reload", ok=False, error=str(exc)))
            return
        old = self.settings
        kept = [name for name in self.RESTART_ONLY if getattr(new, name) != getattr(old, name)]
        if kept:
            log.warning("reload: %s changes only when the daemon restarts; keeping the running value",
                        ", ".join(n.replace("_", "-") for n in kept), extra=event("reload_kept", settings=kept))
            new = replace(new, **{name: getattr(old, name) for name in kept})
        try:
            self.check(new)
        except TunneldError as exc:
            log.error("reload refused, the running config stays: %s", exc,
                      extra=event("reload", ok=False, error=str(exc)))
            return
        changed = [name for name in ("log_level", "log_format") if getattr(new, name) != getattr(old, name)]
        if changed:
            logs.setup(new.log_level, new.log_format)
        if new.metrics != old.metrics:
            changed.append("metrics")
            self.loop.create_task(self._move_metrics(new.metrics))
        try:
            changed += self.changed(old, new)
        except Exception:
            self.internal_error()
        self.settings = replace(new, metrics=old.metrics) if "metrics" in changed else new
        log.info("reloaded the config: %s", ", ".join(c.replace("_", "-") for c in changed) or "nothing changed",
                 extra=event("reload", ok=True, changed=changed))

    def check(self, new) -> None:
        """Refuse new settings (TunneldError) that cannot take effect, before anything changes."""

    def changed(self, old, new) -> list[str]:
        """What else the new settings change, done: the names of the settings."""
        return []

    async def _move_metrics(self, where) -> None:
        """--metrics moved: the new address first, then the old one closed (kept if the new fails)."""
        try:
            server = await metrics_http.start(where, self.status_now)
        except TunneldError as exc:
            log.error("reload: metrics stay where they were: %s", exc, extra=event("reload", ok=False, error=str(exc)))
            return
        if self.scrape is not None:
            self.scrape.close()
        self.scrape = server
        self.settings = replace(self.settings, metrics=where)

    def status_now(self) -> dict:
        return self._control({"cmd": "status"})

    def finish(self, code: int, message: str) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result((code, message))

    async def wait(self) -> tuple[int, str]:
        return await self._done

    def stop_base(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.loop.remove_signal_handler(sig)
        if self.scrape is not None:
            self.scrape.close()

    def receive(self, data: bytes, ep, now: float) -> None:
        try:
            self.engine.receive(data, ep, now)
        except Exception:
            self.internal_error()

    def internal_error(self) -> None:
        """A bug, not a peer's fault: count it, log the first few, keep running."""
        drops = self.drops
        drops[Drop.INTERNAL_ERROR] += 1
        if drops[Drop.INTERNAL_ERROR] <= 5:
            log.exception("internal error while handling a message")

    def all_drops(self, engine_drops: dict) -> dict:
        """The engine's drops (from its status) and the daemon's own, for status."""
        merged = Counter(engine_drops)
        merged.update(self.drops)
        return {str(k): v for k, v in merged.items()}

    def _tick(self) -> None:
        try:
            self.tick(monotonic())
            self.after_input()
        except Exception:  # a bug must not stop the clock of a daemon kubelet depends on
            log.exception("internal error in the periodic tick")
        self._ticker = self.loop.call_later(TICK, self._tick)

    def tick(self, now: float) -> None:
        raise NotImplementedError

    def after_input(self) -> None:
        """After a batch of input: carry out what the engine asked for besides sending."""
