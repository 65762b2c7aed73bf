"""The I/O of a node's data path: one queue of tunneld0 and one UDP socket, batched both
ways. The node's own process runs one (net/noded.py), and so does each of its workers
(net/node_worker.py), around whichever engine reads and writes the packets.

  on_tun()   read (header + packet, up to 64 KB) -> split into MTU-sized packets ->
             from_tun_train (route once, clamp and seal each) -> batched sends, flushed
             at the end
  on_udp()   read (a GRO train is cut into datagrams) -> receive each -> write_tun
             merges in-order TCP segments -> flush to tunneld0 and the socket

With the express path on (use_express, express.py), each callback starts in C: lone
packets go from read to write there, and the Python path above starts at the first read
the C code hands back, so that nothing overtakes anything.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter
from itertools import chain
from time import monotonic

from ..drops import Drop
from ..engine.offload import VNET_HDR_LEN, Coalescer, single, split
from ..engine.tunnel_split import GSO_UDP_TUNNEL_IPV4, VNET_TNL_LEN
from ..proto import wire
from ..proto.endpoint import RELAY
from .base import READ_BATCH
from . import express
from .backlog import Backlog
from .udpio import Batch, cut, enable_gro, judge, reads as udp_reads

log = logging.getLogger("tunneld.node")

TUN_READS = 64  # reads per readiness callback; each may carry a 64 KB TCP super-packet
TUN_READ_SIZE = VNET_TNL_LEN + 65535
PAD = bytes(VNET_TNL_LEN - VNET_HDR_LEN)  # the tunnel header's fields, zero but in tunnel_merge's
WRITE_BATCH = 64  # packets held for merging before they go to the TUN device


class DataPlane:
    def __init__(self, tun_fd: int, tunnel: bool, sock: socket.socket, mtu: int, drops: Counter, error,
                 sock6: socket.socket | None = None):
        """sock6: the node's IPv6 socket (its reads come to on_udp(sock=sock6); the batch sends
        to IPv6 endpoints by it), or None."""
        self.fd = tun_fd
        self.tunnel = tunnel  # the UDP-tunnel header's size on every read and write
        self.vnet_len = VNET_TNL_LEN if tunnel else VNET_HDR_LEN
        self.sock = sock
        self.gro = enable_gro(sock)
        self.gro6 = enable_gro(sock6) if sock6 is not None else False
        self.backlog = Backlog()
        self.drops = drops
        self.stats: Counter = Counter()  # offload at work, counted per batch (never per packet)
        self.batch = Batch(sock, drops, self.stats, mtu - wire.UDP_OVERHEAD_IPV4, sock6=sock6)
        self.coalescer = Coalescer(tunnel)
        self.coalescing = False
        self.error = error  # called for an exception out of the engine: counted, never fatal
        self.express = None  # _express.c's Express, once use_express() found it built
        self._folded: dict = {}

    def use_express(self, source, slow_tun, slow_udp):
        """Lone packets through the C path (express.py), on the tables of source; the reader
        callbacks to register, (on_tun, on_udp), or None where it is not built. slow_tun and
        slow_udp: the daemon's Python paths from a read it hands back (on_tun, on_udp)."""
        if express.Express is None:
            return None
        self.express = express.Express(self.fd, self.sock.fileno(), self.vnet_len, self.drops,
                                       (Drop.UDP_SEND_FULL, Drop.UDP_SEND_ERROR, Drop.TUN_WRITE_ERROR, Drop.STALE),
                                       source, self.backlog, slow_tun, slow_udp, self.merge, READ_BATCH,
                                       self.batch.max_segment)
        return self.express.on_tun, self.express.on_udp

    def merge(self, packets: list) -> None:
        """A GRO train's packets the express path opened: TCP segments merged, as on_udp does."""
        add = self.coalescer.add
        for packet in packets:
            add(packet)
        self.flush()

    def relay_is(self, relay: tuple | None) -> None:
        """Where the relay speaks from: only its RELAYED DATA is the express path's (the
        link's own messages never are), and its tables are taken again (relayed peers')."""
        if self.express is not None:
            self.express.relay(express.ep6(relay) if relay else None)

    def fold_express(self) -> None:
        """What the express path carried since the last call, into stats (status, reports)."""
        if self.express is not None:
            counts = self.express.counts
            for key, value in counts.items():
                self.stats[key] += value - self._folded.get(key, 0)
            self._folded = counts

    def send(self, ep: tuple, data: bytes) -> None:
        self.batch.send(data, ep)

    def write_tun(self, packet: bytes) -> None:
        if self.coalescing:
            self.coalescer.add(packet)
        else:
            self.write(single(packet))

    def write(self, bufs: list) -> None:
        if self.tunnel and len(bufs[0]) == VNET_HDR_LEN:  # a merged tunnel packet has its own
            bufs.insert(1, PAD)
        try:
            os.writev(self.fd, bufs)
        except OSError:
            self.drops[Drop.TUN_WRITE_ERROR] += 1
            if len(bufs[0]) == VNET_TNL_LEN and self.coalescer.tunnel:
                # A kernel that took the offload flags but not a merged VXLAN packet: from
                # now on they go one by one (TCP resends the one lost here).
                self.coalescer.tunnel = False
                self.stats["tun_tunnel_refused"] += 1
                log.warning("the kernel refused a merged VXLAN super-packet on the TUN device: "
                            "writing VXLAN packet by packet from now on")

    def flush(self) -> None:
        for bufs in self.coalescer.flush():
            if len(bufs[0]) == VNET_TNL_LEN:
                self.stats["tun_tunnel_writes"] += 1
            elif len(bufs) > 4:
                self.stats["tun_merged_writes"] += 1
            self.write(bufs)
        self.batch.flush()

    def on_udp(self, receive, relay: tuple | None, first=None, now: float = 0.0, sock=None) -> None:
        """first: a read the express path handed back (_express.c), and its time. sock: the
        IPv6 socket's turn (the IPv4 one's when None)."""
        now = now or monotonic()
        coalescer, error = self.coalescer, self.error
        sock, gro = (self.sock, self.gro) if sock is None else (sock, self.gro6)
        self.backlog.keep = relay or ()  # the relay's DATA is its link's control: never stale
        reads = udp_reads(sock, gro, self.drops, self.stats, READ_BATCH, self.backlog)
        if first is not None:
            if first.__class__ is int:
                self.drops[Drop.UDP_RECV_ERROR] += 1
                return
            data, size, addr, at = first
            reads = chain((judge(cut(data, size if gro else 0), addr, at, self.drops, self.stats, self.backlog),),
                          reads)
        self.coalescing = self.batch.active = True
        try:
            for datagrams, addr in reads:
                ep = RELAY if addr == relay else addr
                for data in datagrams:
                    try:
                        receive(data, ep, now)
                    except Exception:
                        error()
                if len(coalescer.items) >= WRITE_BATCH:
                    self.flush()
        finally:
            self.coalescing = self.batch.active = False
            self.flush()

    def on_tun(self, from_tun_train, first=None, now: float = 0.0) -> None:
        """first: a read the express path handed back (_express.c), and its time."""
        now = now or monotonic()
        read = os.read
        fd, drops, stats, vnet_len, error = self.fd, self.drops, self.stats, self.vnet_len, self.error
        if first.__class__ is int:
            drops[Drop.TUN_READ_ERROR] += 1
            return
        self.batch.active = True
        try:
            for _ in range(TUN_READS):
                if first is not None:
                    buf, first = first, None
                else:
                    try:
                        buf = read(fd, TUN_READ_SIZE)
                    except BlockingIOError:
                        break
                    except OSError:
                        drops[Drop.TUN_READ_ERROR] += 1
                        break
                packets, reason = split(buf, vnet_len)
                if reason:
                    drops[reason] += 1
                    continue
                if len(packets) > 1:
                    stats["tun_tunnel_reads" if buf[1] & GSO_UDP_TUNNEL_IPV4 else "tun_super_reads"] += 1
                try:
                    from_tun_train(packets, now)
                except Exception:
                    error()
        finally:
            self.batch.active = False
            self.batch.flush()
