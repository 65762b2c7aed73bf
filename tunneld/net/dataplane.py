"""The I/O of a node's data path: one queue of tunneld0 and one UDP socket, batched both
ways. The node's own process runs one (net/noded.py), and so does each of its workers
(net/node_worker.py), around whichever engine reads and writes the packets.

  on_tun()   read (header + packet, up to 64 KB) -> split into MTU-sized packets ->
             from_tun_train (route once, clamp and seal each) -> batched sends, flushed
             at the end
  on_udp()   read (a GRO train is cut into datagrams) -> receive each -> write_tun
             merges in-order TCP segments -> flush to tunneld0 and the socket
"""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter
from time import monotonic

from ..drops import Drop
from ..engine.offload import VNET_HDR_LEN, Coalescer, single, split
from ..engine.tunnel_split import GSO_UDP_TUNNEL_IPV4, VNET_TNL_LEN
from ..proto import wire
from ..proto.endpoint import RELAY
from .base import READ_BATCH
from .backlog import Backlog
from .udpio import Batch, enable_gro, reads as udp_reads

log = logging.getLogger("tunneld.node")

TUN_READS = 64  # reads per readiness callback; each may carry a 64 KB TCP super-packet
TUN_READ_SIZE = VNET_TNL_LEN + 65535
PAD = bytes(VNET_TNL_LEN - VNET_HDR_LEN)  # the tunnel header's fields, zero but in tunnel_merge's
WRITE_BATCH = 64  # packets held for merging before they go to the TUN device


class DataPlane:
    def __init__(self, tun_fd: int, tunnel: bool, sock: socket.socket, mtu: int, drops: Counter, error):
        self.fd = tun_fd
        self.tunnel = tunnel  # the UDP-tunnel header's size on every read and write
        self.vnet_len = VNET_TNL_LEN if tunnel else VNET_HDR_LEN
        self.sock = sock
        self.gro = enable_gro(sock)
        self.backlog = Backlog()
        self.drops = drops
        self.stats: Counter = Counter()  # offload at work, counted per batch (never per packet)
        self.batch = Batch(sock, drops, self.stats, mtu - wire.UDP_OVERHEAD_IPV4)
        self.coalescer = Coalescer(tunnel)
        self.coalescing = False
        self.error = error  # called for an exception out of the engine: counted, never fatal

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

    def on_udp(self, receive, relay: tuple | None) -> None:
        now = monotonic()
        sock, gro, coalescer, error = self.sock, self.gro, self.coalescer, self.error
        self.backlog.keep = relay or ()  # the relay's DATA is its link's control: never stale
        self.coalescing = self.batch.active = True
        try:
            for datagrams, addr in udp_reads(sock, gro, self.drops, self.stats, READ_BATCH, self.backlog):
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

    def on_tun(self, from_tun_train) -> None:
        now = monotonic()
        read = os.read
        fd, drops, stats, vnet_len, error = self.fd, self.drops, self.stats, self.vnet_len, self.error
        self.batch.active = True
        try:
            for _ in range(TUN_READS):
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
