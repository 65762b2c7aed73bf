"""The relay's side of its workers (`tunneld serve --workers N`, relay_worker.py).

It starts N - 1 worker processes, each on a socket of the port's SO_REUSEPORT group that
the relay bound before them (so that its own socket is the group's first, where steer.py
sends everything but RELAYED), keeps their forwarding table in step with the engine's
members, takes what they hand over as if it had arrived on its own socket, and adds
their counters to the members' and to status. A worker that dies takes its socket with
it: the kernel leaves it out of the group, and its nodes fall to the others.
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from time import monotonic

import msgpack

from .procs import HANDOFF_BUFFER, broadcast, messages, spawn, stop

log = logging.getLogger("tunneld.relay")


class RelayWorkers:
    def __init__(self, socks: list[socket.socket], mtu: int):
        self.procs, self.ctls = [], []
        self.v6 = bool(socks) and socks[0].family == socket.AF_INET6  # the family the workers forward
        for sock in socks:
            proc, ctl = spawn("tunneld.net.relay_worker", [sock.fileno(), mtu], (sock.fileno(),))
            sock.close()  # the worker's now
            self.procs.append(proc)
            self.ctls.append(ctl)
        self.version = -1
        self.forwarded = [0] * len(socks)
        self.drops: Counter = Counter()
        self.stats: Counter = Counter()
        self.loop = None
        self.daemon = None
        self._buf = bytearray(HANDOFF_BUFFER)  # one message at a time, whatever its size (SEQPACKET)

    def start(self, loop, daemon) -> None:
        self.loop, self.daemon = loop, daemon
        for i, ctl in enumerate(self.ctls):
            loop.add_reader(ctl.fileno(), self._on_ctl, i)
        self.sync()

    def sync(self) -> None:
        """After input and on every tick: the members' table, when it changed."""
        engine = self.daemon.engine
        if engine.table_version == self.version:
            return
        self.version = engine.table_version
        # members on the workers' socket's family only: the others' datagrams (to and from
        # the relay's socket of the other family) are the relay's own process's to forward
        table = [[ep[0], ep[1], m.addr, m.relayed_prefix] for ep, m in engine.by_endpoint.items()
                 if ep.__class__ is tuple and engine.by_addr.get(m.addr) is m and (":" in ep[0]) == self.v6]
        broadcast(self.ctls, b"T" + msgpack.packb(table))

    def _on_ctl(self, i: int) -> None:
        ctl = self.ctls[i]
        engine = self.daemon.engine
        for msg in messages(ctl, self._buf, 256):
            if not msg:
                log.error("relay worker %d (pid %d) exited; its nodes go to the others", i + 1, self.procs[i].pid)
                self.loop.remove_reader(ctl.fileno())
                return
            kind = msg[:1]
            if kind == b"D":
                n = int.from_bytes(msg[1:3], "big")
                host, port = msgpack.unpackb(msg[3 : 3 + n])
                self.daemon.receive(msg[3 + n :], (host, port), monotonic())
            elif kind == b"S":
                self._report(i, msgpack.unpackb(msg[1:]), engine)
        self.sync()
        self.daemon.after_input()

    def _report(self, i: int, report: dict, engine) -> None:
        for addr, (nbytes, packets) in report["rx"].items():
            m = engine.by_addr.get(addr)
            self.forwarded[i] += packets
            if m is not None:
                m.rx_bytes += nbytes
                m.rx_packets += packets
        for addr, nbytes in report["tx"].items():
            m = engine.by_addr.get(addr)
            if m is not None:
                m.tx_bytes += nbytes
        self.drops.update(report["drops"])
        self.stats.update(report["stats"])

    def status(self) -> list[dict]:
        return [{"worker": i + 1, "pid": p.pid, "running": p.poll() is None, "forwarded": self.forwarded[i]}
                for i, p in enumerate(self.procs)]

    def close(self) -> None:
        stop(self.loop, self.ctls, self.procs)
