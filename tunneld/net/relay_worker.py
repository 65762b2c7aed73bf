"""A relay worker: one more process forwarding RELAYED datagrams on the relay's port.

`tunneld serve --workers N` starts N - 1 of these beside the relay's own process. Each
reads its own socket of the port's SO_REUSEPORT group (steer.py sends it the RELAYED
datagrams of its share of nodes) and forwards them as the relay engine does: the source
endpoint must be a member's, the address field names the destination member, the field
is rewritten to the source's address. It holds no keys and no sessions, only the table
the relay sends it whenever membership changes; it takes no lock per packet, as it
shares nothing with the others.

Whatever it cannot forward itself (a destination on TCP or behind another relay, any
other message type, a stranger's datagram) goes to the relay's process over the control
socket; what strangers send, at most HANDOFF_RATE a second, so that a flood of garbage
costs the relay no more than it did before.

Control socket (SOCK_SEQPACKET), one message each way per packet:
  relay -> worker   b"T" + msgpack [[host, port, addr 4 bytes, relayed prefix], ...]
  worker -> relay   b"D" + msgpack [host, port] length (2 bytes) + it + the datagram
                    b"S" + msgpack {"rx": {addr: [bytes, packets]}, "tx": {addr: bytes},
                                    "drops": {...}, "stats": {...}}  once a second
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections import Counter
from time import monotonic

import msgpack

from .. import logs
from ..drops import Drop
from ..proto import wire
from .base import READ_BATCH, run
from .procs import HANDOFF_BUFFER, messages
from .backlog import Backlog
from .udpio import Batch, enable_gro, reads as udp_reads

HANDOFF_RATE = 2000.0  # datagrams a second handed to the relay's process (burst: as many)
REPORT_EVERY = 1.0
_RELAYED = wire.RELAYED


class Worker:
    def __init__(self, sock: socket.socket, ctl: socket.socket, mtu: int):
        self.sock = sock
        self.ctl = ctl
        self.drops: Counter = Counter()
        self.stats: Counter = Counter()
        self.batch = Batch(sock, self.drops, self.stats, mtu - wire.UDP_OVERHEAD_IPV4, lanes=True)
        self.gro = enable_gro(sock)
        self.backlog = Backlog()  # the relay: only relayed DATA is ever stale
        self.by_endpoint: dict = {}  # (host, port) -> (relayed prefix, addr)
        self.by_addr: dict = {}  # addr -> (host, port)
        self.rx: dict = {}  # addr -> [bytes, packets], since the last report
        self.tx: Counter = Counter()
        self.tokens = HANDOFF_RATE
        self.refilled = monotonic()
        self.done: asyncio.Future | None = None
        self._next_report: asyncio.TimerHandle | None = None
        self._buf = bytearray(HANDOFF_BUFFER)

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        loop.add_reader(self.sock.fileno(), self.on_udp)
        loop.add_reader(self.ctl.fileno(), self.on_ctl)
        self._next_report = loop.call_later(REPORT_EVERY, self.report)
        try:
            await self.done
        finally:
            self._next_report.cancel()

    def on_ctl(self) -> None:
        for msg in messages(self.ctl, self._buf, 1):
            if not msg:  # the relay is gone: so are we
                if not self.done.done():
                    self.done.set_result(None)
            elif msg[:1] == b"T":
                table = msgpack.unpackb(msg[1:])
                self.by_endpoint = {(h, p): (prefix, addr) for h, p, addr, prefix in table}
                self.by_addr = {addr: (h, p) for h, p, addr, _ in table}

    def on_udp(self) -> None:
        """The hot path, as the relay engine's RELAYED branch: look up, rewrite, send on."""
        sock, gro, batch = self.sock, self.gro, self.batch
        by_endpoint, by_addr, rx, tx = self.by_endpoint, self.by_addr, self.rx, self.tx
        batch.active = True
        try:
            for datagrams, addr in udp_reads(sock, gro, self.drops, self.stats, READ_BATCH, self.backlog):
                src = by_endpoint.get(addr)
                for data in datagrams:
                    if src is not None and data[0] == _RELAYED and len(data) > wire.RELAYED_HEADER_LEN:
                        dst = by_addr.get(data[4:8])
                        if dst is not None:
                            n = len(data)
                            counts = rx.get(src[1])
                            if counts is None:
                                counts = rx[src[1]] = [0, 0]
                            counts[0] += n
                            counts[1] += 1
                            tx[data[4:8]] += n
                            batch.send(src[0] + data[8:], dst)
                            continue
                    self.hand_off(addr, data, src is not None)
        finally:
            batch.active = False
            batch.flush()

    def hand_off(self, addr, data: bytes, member: bool) -> None:
        """To the relay's process. A member's datagram always (a destination on TCP or on
        another relay: the relay's to reach); a stranger's within HANDOFF_RATE."""
        if not member:
            now = monotonic()
            self.tokens = min(HANDOFF_RATE, self.tokens + (now - self.refilled) * HANDOFF_RATE)
            self.refilled = now
            if self.tokens < 1:
                self.drops[Drop.WORKER_HANDOFF_RATE] += 1
                return
            self.tokens -= 1
        head = msgpack.packb([addr[0], addr[1]])
        try:
            self.ctl.send(b"D" + len(head).to_bytes(2, "big") + head + data)
        except BlockingIOError:
            self.drops[Drop.WORKER_HANDOFF_FULL] += 1
        except OSError:
            pass  # the relay is going away; on_ctl ends us

    def report(self) -> None:
        msg = {"rx": self.rx, "tx": dict(self.tx), "drops": {str(k): v for k, v in self.drops.items()},
               "stats": dict(self.stats)}
        self.rx, self.tx = {}, Counter()
        self.drops.clear()
        self.stats.clear()
        try:
            self.ctl.send(b"S" + msgpack.packb(msg))
        except OSError:
            pass
        self._next_report = asyncio.get_running_loop().call_later(REPORT_EVERY, self.report)


def main(argv: list[str]) -> int:
    """python -m tunneld.net.relay_worker UDP_FD MTU CONTROL_FD (the relay starts it, procs.py)."""
    sock = socket.socket(fileno=int(argv[0]))
    ctl = socket.socket(fileno=int(argv[2]))
    sock.setblocking(False)
    ctl.setblocking(False)
    logs.setup("info", os.environ.get(logs.ENV, "text"))  # as the relay logs
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is the relay's own process's
    run(Worker(sock, ctl, int(argv[1])).main())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
