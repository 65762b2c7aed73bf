"""Batched UDP: many datagrams per system call, both ways.

Sending, a Batch collects what one readiness callback produces. Consecutive
datagrams to the same endpoint, all of one size but a smaller last one, leave in
one sendmsg with UDP_SEGMENT: the kernel cuts them apart (in the NIC, or late
in the stack), so the datagrams on the wire are exactly those we built.
Receiving, UDP_GRO lets the kernel hand over such a train as one buffer with
its segment size; receive_batch() cuts it back into datagrams. Each read carries the
kernel's receive time, so that a standing queue of peers' data is drained (backlog.py).

Where the kernel or the route cannot do it (EIO: no checksum offload on the
way out; EINVAL), the batch falls back to one sendto per datagram, for good.
The kernel also refuses (EMSGSIZE) a train whose datagrams are larger than the
route's MTU, where a lone datagram would simply be fragmented: so a datagram that
cannot fit an Ethernet frame (a large control message, a directory chunk) never
joins a train, and a train refused for its size goes out one datagram at a time.
"""

from __future__ import annotations

import errno
import logging
import socket
import struct
from time import time

from ..drops import Drop
from ..engine.lanes import lane_of
from .backlog import Backlog, enable_stamps

log = logging.getLogger("tunneld")

SOL_UDP = 17
UDP_SEGMENT = 103  # <linux/udp.h>
UDP_GRO = 104
MAX_SEGMENTS = 64
MAX_BYTES = 65000  # one IPv4 datagram's worth of payload, with room for headers
ETHERNET_SEGMENT = 1500 - 20 - 8  # the largest datagram in one Ethernet frame
_H = struct.Struct("=H")
_TS = struct.Struct("=qq")  # struct timespec
_CMSG_SPACE = socket.CMSG_SPACE(4) + socket.CMSG_SPACE(_TS.size)
_SCM_TIMESTAMPNS = 35


def enable_gro(sock: socket.socket) -> bool:
    """UDP GRO, and the kernel's receive time on every read (backlog.py)."""
    enable_stamps(sock)
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        return True
    except OSError:
        return False


def receive_batch(sock: socket.socket, gro: bool):
    """One read: a list of datagrams, the sender's address, and the time the kernel took it in
    (0.0 where it did not say). Raises like recvmsg. An IPv6 socket's sender comes as
    (host, port), as an IPv4 one's does (proto/endpoint.py)."""
    data, anc, _flags, addr = sock.recvmsg(65535, _CMSG_SPACE)
    if len(addr) > 2:
        addr = addr[:2]
    size = 0
    at = 0.0
    for level, kind, value in anc:
        if level == SOL_UDP and kind == UDP_GRO:
            size = int.from_bytes(value[:4], "little")
        elif kind == _SCM_TIMESTAMPNS and level == socket.SOL_SOCKET and len(value) >= _TS.size:
            sec, ns = _TS.unpack_from(value)
            at = sec + ns * 1e-9
    return cut(data, size if gro else 0), addr, at


def cut(data: bytes, size: int):
    """A GRO train back into its datagrams (size: the kernel's segment size, 0: none)."""
    if len(data) > size > 0:
        return [data[i : i + size] for i in range(0, len(data), size)]
    return (data,)


def read(sock: socket.socket, gro: bool, drops, stats, backlog: Backlog | None = None):
    """One read in a readiness callback: (datagrams, sender), or None when it is drained; no
    datagrams for a train of peers' data that a standing queue made stale (backlog.py)."""
    try:
        datagrams, addr, at = receive_batch(sock, gro)
    except BlockingIOError:
        return None
    except OSError:
        drops[Drop.UDP_RECV_ERROR] += 1
        return None
    return judge(datagrams, addr, at, drops, stats, backlog)


def judge(datagrams, addr, at: float, drops, stats, backlog: Backlog | None):
    """A read's datagrams as read() gives them: none where the backlog finds them stale."""
    if at and backlog is not None:
        now = time()
        if backlog.stale(datagrams[0], addr, now - at, now):
            drops[Drop.STALE] += len(datagrams)
            return (), addr
    if len(datagrams) > 1:
        stats["udp_gro_reads"] += 1
    return datagrams, addr


def reads(sock: socket.socket, gro: bool, drops, stats, limit: int, backlog: Backlog | None = None):
    """The reads of one readiness callback, at most limit: (datagrams, sender) each, until
    the socket is drained."""
    for _ in range(limit):
        got = read(sock, gro, drops, stats, backlog)
        if got is None:
            return
        yield got


class Batch:
    """Outgoing datagrams, held while `active` and sent by flush(); sent at once otherwise."""

    def __init__(self, sock: socket.socket, drops, stats, max_segment: int = ETHERNET_SEGMENT,
                 lanes: bool = False, sock6: socket.socket | None = None):
        """max_segment: the largest datagram that may join a train, what one frame of the
        underlay carries (its MTU less the IPv4 and UDP headers). lanes: a train holds DATA
        of one lane only (the relay's: it forwards several senders' processes to one node,
        whose kernel steers a train to a process by its first datagram's lane). sock6: where
        datagrams to IPv6 endpoints leave (None: they cannot)."""
        self.sock = sock
        self.sock6 = sock6
        self.lanes = lanes
        self.lane = 0
        self.max_segment = max_segment
        self.drops = drops
        self.stats = stats
        self.gso = True
        self.active = False
        self.bufs: list[bytes] = []
        self.addr = None
        self.size = 0
        self.total = 0
        self.ended = False  # the train's last datagram was short: nothing more may join it

    def send(self, data: bytes, addr) -> None:
        if not self.active:
            self._sendto(data, addr)
            return
        bufs = self.bufs
        n = len(data)
        lane = lane_of(data) if self.lanes else 0
        if n > self.max_segment:  # alone, in order: the kernel fragments it, a train it would refuse
            if bufs:
                self.flush()
            self._sendto(data, addr)
            return
        if (bufs and addr == self.addr and not self.ended and n <= self.size and lane == self.lane
                and len(bufs) < MAX_SEGMENTS and self.total + n <= MAX_BYTES):
            bufs.append(data)
            self.total += n
            if n < self.size:
                self.ended = True  # only the last segment may be short
            return
        if bufs:
            self.flush()
        self.bufs = [data]
        self.addr = addr
        self.lane = lane
        self.size = self.total = n
        self.ended = False

    def flush(self) -> None:
        bufs = self.bufs
        if not bufs:
            return
        self.bufs = []
        if len(bufs) == 1 or not self.gso:
            for b in bufs:
                self._sendto(b, self.addr)
            return
        sock = self.sock6 if self.sock6 is not None and ":" in self.addr[0] else self.sock
        try:
            sock.sendmsg(bufs, [(SOL_UDP, UDP_SEGMENT, _H.pack(self.size))], 0, self.addr)
            self.stats["udp_gso_sends"] += 1
        except BlockingIOError:
            self.drops[Drop.UDP_SEND_FULL] += len(bufs)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:  # the route's MTU is smaller than these datagrams
                self.stats["udp_gso_too_big"] += 1
            elif exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                self.gso = False
                log.info("UDP segmentation offload unavailable (%s); sending datagrams one by one",
                         exc.strerror)
            else:
                self.drops[Drop.UDP_SEND_ERROR] += len(bufs)
                return
            for b in bufs:
                self._sendto(b, self.addr)

    def _sendto(self, data: bytes, addr) -> None:
        try:
            (self.sock6 if self.sock6 is not None and ":" in addr[0] else self.sock).sendto(data, addr)
        except BlockingIOError:
            self.drops[Drop.UDP_SEND_FULL] += 1
        except OSError:
            self.drops[Drop.UDP_SEND_ERROR] += 1
