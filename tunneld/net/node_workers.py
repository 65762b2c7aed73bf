"""The node's side of its workers (`tunneld join --workers N`, node_worker.py).

It starts N - 1 worker processes, lanes 1..N-1, each on a queue of tunneld0 and a socket
of the node's SO_REUSEPORT group bound after the node's own (steer.py's node program
sends lane L to socket L mod N; lane 0 is the node's process). It keeps their table in
step with the engine (engine/lanes.py's export, whenever the engine's table version
moves or the relay's address or transport changes), does what they hand over, and adds
their counters to the peers', the drops and status.

A worker that dies ends the node (exit 1, and systemd starts it again): its lane's
datagrams would otherwise land in another lane's process, whose replay windows are not
that lane's.
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from time import monotonic

import msgpack

from ..engine.lanes import export, lane_of
from ..drops import Drop
from ..errors import EXIT_FAILURE
from ..proto.endpoint import RELAY
from .node_worker import handed, unhand
from .procs import HANDOFF_BUFFER, broadcast, messages, spawn, stop

log = logging.getLogger("tunneld.node")

CONTROL_READS = 256


class NodeWorkers:
    def __init__(self, socks: list[socket.socket], queues: list[int], tunnel: bool, mtu: int,
                 socks6: list[socket.socket] = ()):
        """socks6: each worker's IPv6 socket of the node's IPv6 port (or none at all)."""
        self.procs, self.ctls = [], []
        self.udp6 = bool(socks6)  # the workers send and receive IPv6 too
        for lane, (sock, queue) in enumerate(zip(socks, queues), start=1):
            six = socks6[lane - 1].fileno() if socks6 else -1
            proc, ctl = spawn("tunneld.net.node_worker", [lane, sock.fileno(), queue, mtu, int(tunnel), six],
                              (sock.fileno(), queue, *((six,) if six >= 0 else ())))
            self.procs.append(proc)
            self.ctls.append(ctl)
        self.count = len(self.procs) + 1  # lanes, ours included
        self.version = -1
        self.drops: Counter = Counter()
        self.stats: Counter = Counter()
        self.carried = [[0, 0, 0] for _ in self.procs]  # per worker: bytes in, bytes out, packets handed to us
        self.daemon = None
        self.loop = None
        self._buf = bytearray(HANDOFF_BUFFER)

    def start(self, loop, daemon) -> None:
        self.loop, self.daemon = loop, daemon
        self.engine_receive = daemon.engine.receive
        for i, ctl in enumerate(self.ctls):
            loop.add_reader(ctl.fileno(), self._on_ctl, i)
        self.sync(force=True)

    def sync(self, force: bool = False) -> None:
        """After input and on every tick: the table, when the engine's moved."""
        d = self.daemon
        engine = d.engine
        if engine.table.version == self.version and not force:
            return
        self.version = engine.table.version
        table = export(engine, relay_udp=not d.use_tcp and (self.udp6 or ":" not in d.relay_addr[0]), udp6=self.udp6)
        table["relay"] = list(d.relay_addr)
        table["lanes"] = self.count
        broadcast(self.ctls, b"T" + msgpack.packb(table))

    def receive(self, data: bytes, ep, now: float) -> None:
        """Our socket's datagrams, the relay's TCP stream's and the workers' hand-offs: ours
        to the engine, another lane's to its worker (steering saw only a train's first)."""
        lane = lane_of(data) % self.count
        if not lane:
            self.engine_receive(data, ep, now)
            return
        self.stats["lane_handoffs"] += 1
        try:
            self.ctls[lane - 1].send(handed(data, ep))
        except BlockingIOError:
            self.drops[Drop.WORKER_HANDOFF_FULL] += 1
        except OSError:
            pass

    def _on_ctl(self, i: int) -> None:
        ctl = self.ctls[i]
        d = self.daemon
        engine = d.engine
        now = monotonic()
        d.plane.batch.active = True
        for msg in messages(ctl, self._buf, CONTROL_READS):
            if not msg:
                self.loop.remove_reader(ctl.fileno())
                d.finish(EXIT_FAILURE, f"node worker {i + 1} (pid {self.procs[i].pid}) exited; "
                                       "the node stops so that it starts again whole")
                break
            kind = msg[:1]
            try:
                if kind == b"P":
                    engine.from_tun(msg[1:], now)
                elif kind == b"E":
                    index, plaintext, via = msgpack.unpackb(msg[1:])
                    engine.from_worker(index, plaintext, RELAY if via is None else tuple(via), now)
                elif kind == b"U":
                    peer = engine.peers.get(msg[1:5])
                    if peer is not None:
                        engine.handshakes.unreadable(peer, now)
                elif kind == b"R":
                    self.receive(*unhand(msg), now)
                elif kind == b"S":
                    self._report(i, msgpack.unpackb(msg[1:]), engine)
            except Exception:
                d.internal_error()
        d.plane.batch.active = False
        d.plane.batch.flush()
        d.after_input()

    def _report(self, i: int, report: dict, engine) -> None:
        carried = self.carried[i]
        for addr, (rx, tx, last_rx, last_tx, rx_packets, tx_packets) in report["peers"].items():
            carried[0] += rx
            carried[1] += tx
            peer = engine.peers.get(addr)
            if peer is not None:
                peer.rx_bytes += rx
                peer.tx_bytes += tx
                peer.rx_packets += rx_packets
                peer.tx_packets += tx_packets
                peer.last_rx = max(peer.last_rx, last_rx)
                peer.last_tx = max(peer.last_tx, last_tx)
        carried[2] += report["handed"]
        self.drops.update(report["drops"])
        self.stats.update(report["stats"])

    def status(self) -> list[dict]:
        return [{"worker": i + 1, "pid": p.pid, "running": p.poll() is None, "rx_bytes": c[0], "tx_bytes": c[1],
                 "handed_to_node": c[2]} for i, (p, c) in enumerate(zip(self.procs, self.carried))]

    def close(self) -> None:
        stop(self.loop, self.ctls, self.procs)
