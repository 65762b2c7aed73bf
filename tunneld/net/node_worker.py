"""A node worker: one more process carrying a node's data, on a lane of its own.

`tunneld join --workers N` starts N - 1 of these beside the node's process
(node_workers.py). Each reads its own queue of tunneld0 and its own socket of the
node's UDP port (steer.py gives it the DATA of its lanes) and runs engine/lanes.py's
Lane between them: no lock, nothing shared per packet. It holds the keys of its peers'
sessions, which the node's process sends it, never the node's private key.

Control socket (SOCK_SEQPACKET), one message each way per item:
  node -> worker   b"T" + msgpack: engine/lanes.py's table, with "relay": [host, port] and
                   "lanes": N
                   b"R" + msgpack [host, port] or nil (the relay) + a datagram in our lanes
                   that reached another process (in a GRO train, or the relay's TCP stream)
  worker -> node   b"P" + a packet from tunneld0 the node's engine sends (Lane.from_tun_train)
                   b"E" + msgpack [index, plaintext, via]: Node.from_worker
                   b"U" + a peer's address: data for a session we lack (a re-handshake)
                   b"R" + as above: a datagram in a GRO train of ours that is not ours
                   b"S" + msgpack {"peers", "drops", "handed", "stats"}  once a second
The node's process ending (its end of the socket closing) ends the worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections import Counter
from functools import partial
from time import monotonic

import msgpack

from .. import logs
from ..drops import Drop
from ..engine.lanes import Lane
from ..proto.endpoint import RELAY
from .base import run
from .dataplane import DataPlane
from .express import LaneSource
from .procs import HANDOFF_BUFFER, messages

log = logging.getLogger("tunneld.node")
REPORT_EVERY = 1.0
CONTROL_READS = 64


class NodeWorker:
    def __init__(self, lane: int, sock: socket.socket, tun_fd: int, tunnel: bool, ctl: socket.socket, mtu: int,
                 sock6: socket.socket | None = None):
        self.ctl = ctl
        self.drops: Counter = Counter()
        self.sock6 = sock6  # our IPv6 socket of the node's IPv6 port, read on the Python path
        self.plane = DataPlane(tun_fd, tunnel, sock, mtu, self.drops, self.error, sock6)
        self.lane = Lane(lane, self)
        self.relay: tuple | None = None
        self.done: asyncio.Future | None = None
        self._next_report: asyncio.TimerHandle | None = None
        self._buf = bytearray(HANDOFF_BUFFER)

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        loop.add_reader(self.ctl.fileno(), self.on_ctl)
        source = LaneSource(self.lane, lambda: self.relay, self.error)
        on_tun, on_udp = self.plane.use_express(source, self.on_tun, self.on_udp) or (self.on_tun, self.on_udp)
        loop.add_reader(self.plane.sock.fileno(), on_udp)
        if self.sock6 is not None:
            loop.add_reader(self.sock6.fileno(), partial(self.on_udp, sock=self.sock6))
        loop.add_reader(self.plane.fd, on_tun)
        self._next_report = loop.call_later(REPORT_EVERY, self.report)
        try:
            await self.done
        finally:
            self._next_report.cancel()

    # -- what the Lane sends ---------------------------------------------------------------

    def send(self, ep, data: bytes) -> None:
        self.plane.batch.send(data, self.relay if ep is RELAY else ep)

    def write_tun(self, packet: bytes) -> None:
        self.plane.write_tun(packet)

    def to_engine(self, packet: bytes) -> None:
        self._tell(b"P" + packet)

    def event(self, index: bytes, plaintext: bytes, via) -> None:
        self._tell(b"E" + msgpack.packb([index, plaintext, None if via is RELAY else list(via)]))

    def unreadable(self, addr: bytes) -> None:
        self._tell(b"U" + addr)

    def elsewhere(self, data: bytes, ep) -> None:
        self.plane.stats["lane_handoffs"] += 1  # per datagram, but only for a train's strays
        self._tell(handed(data, ep))

    def _tell(self, msg: bytes) -> None:
        try:
            self.ctl.send(msg)
        except BlockingIOError:
            self.drops[Drop.WORKER_HANDOFF_FULL] += 1
        except OSError:
            pass  # the node is going away; on_ctl ends us

    def error(self) -> None:
        self.drops[Drop.INTERNAL_ERROR] += 1
        if self.drops[Drop.INTERNAL_ERROR] <= 5:
            log.exception("internal error in node worker %d", self.lane.lane)

    # -- input -----------------------------------------------------------------------------

    def on_ctl(self) -> None:
        for msg in messages(self.ctl, self._buf, CONTROL_READS):
            if not msg:  # the node is gone: so are we
                if not self.done.done():
                    self.done.set_result(None)
                return
            kind = msg[:1]
            if kind == b"T":
                table = msgpack.unpackb(msg[1:])
                self.relay = tuple(table["relay"]) if table["relay"] else None
                self.plane.relay_is(self.relay)
                self.lane.apply(table)
            elif kind == b"R":
                data, ep = unhand(msg)
                self.plane.coalescing = False
                try:
                    self.lane.receive(data, ep, monotonic())
                except Exception:
                    self.error()
                self.plane.batch.flush()

    def on_udp(self, first=None, now: float = 0.0, sock=None) -> None:
        """The socket's reads (from first, one the express path handed back; sock: the IPv6
        socket's, on the Python path). The table first: a session the node's process made
        before its peer could use it (sent to us before the handshake's answer left) is
        there before the peer's data. (The express path carries only sessions the table
        brought already.)"""
        self.on_ctl()
        self.plane.on_udp(self.lane.receive, self.relay, first, now, sock)

    def on_tun(self, first=None, now: float = 0.0) -> None:
        self.plane.on_tun(self.lane.from_tun_train, first, now)

    def report(self) -> None:
        out = self.lane.report(monotonic())
        self.drops.update(out["drops"])
        out["drops"] = {str(k): v for k, v in self.drops.items()}
        self.plane.fold_express()
        out["stats"] = dict(self.plane.stats)
        self.drops.clear()
        self.plane.stats.clear()
        self._tell(b"S" + msgpack.packb(out))
        self._next_report = asyncio.get_running_loop().call_later(REPORT_EVERY, self.report)


def handed(data: bytes, ep) -> bytes:
    """A datagram for another process, with where it came from: b"R", the length of the
    msgpack'd endpoint (nil for the relay), it, the datagram."""
    head = msgpack.packb(None if ep is RELAY else list(ep))
    return b"R" + bytes((len(head),)) + head + data


def unhand(msg: bytes) -> tuple[bytes, object]:
    n = msg[1]
    ep = msgpack.unpackb(msg[2 : 2 + n])
    return msg[2 + n :], RELAY if ep is None else tuple(ep)


def main(argv: list[str]) -> int:
    """python -m tunneld.net.node_worker LANE UDP_FD TUN_FD MTU TUNNEL UDP6_FD CONTROL_FD (the node starts
    it, procs.py; UDP6_FD -1: no IPv6 socket)."""
    lane, udp_fd, tun_fd, mtu, tunnel, udp6_fd, ctl_fd = (int(a) for a in argv)
    sock = socket.socket(fileno=udp_fd)
    sock6 = socket.socket(fileno=udp6_fd) if udp6_fd >= 0 else None
    if sock6 is not None:
        sock6.setblocking(False)
    ctl = socket.socket(fileno=ctl_fd)
    sock.setblocking(False)
    ctl.setblocking(False)
    os.set_blocking(tun_fd, False)
    # the node's process ends us, by closing the control socket; a reload (SIGHUP) is its alone
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    logs.setup("info", os.environ.get(logs.ENV, "text"))  # as the node logs
    run(NodeWorker(lane, sock, tun_fd, bool(tunnel), ctl, mtu, sock6).main())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
