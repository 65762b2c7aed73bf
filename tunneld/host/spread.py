"""Flows spread evenly over tunneld0's queues, and so over a node's workers.

Each worker reads one queue of tunneld0 (`tunneld join --workers N`). Left to itself the
kernel puts a flow on a queue by its hash, so four TCP streams on two workers all land on
one worker one time in eight, three on one half the time, and then run at one worker's
speed. (Writing a flow's first packet through a chosen queue does not help: the kernel
sends a SYN's answer before it notes which queue the SYN came through.)

So the node attaches a steering program to tunneld0 (TUNSETSTEERINGEBPF): a flow it has
not seen goes to the next queue in turn, and stays there. A flow is the IPv4 source,
destination, protocol and, for TCP and UDP (flannel's VXLAN among it), the ports; a
fragment, or anything else, has no ports. An IPv6 flow is the same, with the last 4 bytes
of each address (all that differs between overlay addresses, engine/inner.py) and the
next header; ports only right after the fixed header. The kernel takes what it returns
modulo the queues. Anything else goes to queue 0.

      r6 = r1                        the packet (LD_ABS/LD_IND read through r6)
      r0 = [0]; r7 = r0              version and header length
      r0 >>= 4; if r0 == 6: goto six; if r0 != 4: ret 0
      r7 = (r7 & 15) << 2            the IPv4 header's length
      key = {[12], [16], ports 0, [9]}   on the stack, 16 bytes at r10 - 16
      if [6] & 0x3fff == 0 and [9] in (TCP, UDP): key.ports = [r7]
      goto find
six:  key = {[20], [36], ports 0, [6]}
      if [6] in (TCP, UDP): key.ports = [40]
find: r0 = lookup(flows, key); if r0: ret *r0
      r0 = lookup(turn, 0); if !r0: ret 0
      queue = fetch_add(*r0, 1)      the next queue in turn, for this flow from now on
      update(flows, key, queue); ret queue

`flows` is an LRU hash of 65,536 flows: one not seen for long enough to be evicted
starts again on the next queue. Only the kernel decides by the program; nothing depends on
it for correctness (every worker carries every flow), so a kernel that refuses it leaves
the kernel's own hash in charge.

  attach(tun_fd)   load and attach the program; the kernel keeps it with the device
"""

from __future__ import annotations

import fcntl
import os
import struct

from . import bpf
from .bpf import (add_imm, and_imm, call, exit_, fetch_add_w, ja, jeq_imm, jne_imm, ld_abs, ld_ind, ld_map,
                  ldx_w, lsh_imm, mov, mov_imm, rsh_imm, st_w, stx_w)

TUNSETSTEERINGEBPF = 0x800454E0  # _IOR('T', 224, int)
FLOWS = 65536
TCP, UDP = 6, 17


def program(flows: int, turn: int) -> bytes:
    """The steering program over the maps flows (key 16 bytes, value u32) and turn (one u32)."""
    key, value, zero = -16, -24, -20  # stack offsets: the flow's key, its queue, the turn's index
    six = [  # an IPv6 flow's key (each instruction 8 bytes)
        ld_abs(4, 20), stx_w(10, key, 0),
        ld_abs(4, 36), stx_w(10, key + 4, 0),
        st_w(10, key + 8, 0),
        ld_abs(1, 6), stx_w(10, key + 12, 0),
        jeq_imm(0, TCP, 1), jne_imm(0, UDP, 2),
        ld_abs(4, 40), stx_w(10, key + 8, 0),
    ]
    four = [  # an IPv4 flow's key, then over the IPv6 one
        and_imm(7, 15), lsh_imm(7, 2),
        ld_abs(4, 12), stx_w(10, key, 0),
        ld_abs(4, 16), stx_w(10, key + 4, 0),
        st_w(10, key + 8, 0),
        ld_abs(1, 9), stx_w(10, key + 12, 0),
        ld_abs(2, 6), and_imm(0, 0x3FFF), jne_imm(0, 0, 5),   # a fragment: no ports
        ld_abs(1, 9), jeq_imm(0, TCP, 1), jne_imm(0, UDP, 2),
        ld_ind(4, 7, 0), stx_w(10, key + 8, 0),
        ja(len(six)),
    ]
    head = [
        mov(6, 1),
        ld_abs(1, 0), mov(7, 0), rsh_imm(0, 4),
        jeq_imm(0, 6, 1 + len(four)),                 # -> six
        jne_imm(0, 4, -1),                            # -> ret 0
        *four, *six,
        ld_map(1, flows), mov(2, 10), add_imm(2, key), call(bpf.LOOKUP),
        jeq_imm(0, 0, 2), ldx_w(0, 0, 0), exit_(),
        st_w(10, zero, 0), ld_map(1, turn), mov(2, 10), add_imm(2, zero), call(bpf.LOOKUP),
        jeq_imm(0, 0, -1),                            # -> ret 0
        mov_imm(1, 1), fetch_add_w(0, 0, 1), stx_w(10, value, 1),
        ld_map(1, flows), mov(2, 10), add_imm(2, key), mov(3, 10), add_imm(3, value), mov_imm(4, 0),
        call(bpf.UPDATE),
        ldx_w(0, 10, value), exit_(),
    ]
    tail = [mov_imm(0, 0), exit_()]  # ret 0
    code = b"".join(head)
    out = bytearray(code + b"".join(tail))
    # the two forward jumps to "ret 0" (off -1 above) point at the tail
    for i in range(len(code) // 8):
        if out[i * 8] in (0x55, 0x15) and struct.unpack_from("=h", out, i * 8 + 2)[0] == -1:
            struct.pack_into("=h", out, i * 8 + 2, len(code) // 8 - i - 1)
    return bytes(out)


def attach(tun_fd: int) -> None:
    """Flows over the device's queues in turn; OSError where the kernel will not have it."""
    flows = turn = prog = -1
    try:
        flows = bpf.map_create(bpf.MAP_LRU_HASH, 16, 4, FLOWS)
        turn = bpf.map_create(bpf.MAP_ARRAY, 4, 4, 1)
        prog = bpf.prog_load(bpf.PROG_SOCKET_FILTER, program(flows, turn))
        fcntl.ioctl(tun_fd, TUNSETSTEERINGEBPF, struct.pack("i", prog))
    finally:  # the program holds its maps, the device its program
        for fd in (prog, turn, flows):
            if fd >= 0:
                os.close(fd)
