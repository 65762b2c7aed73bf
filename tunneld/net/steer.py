"""Which of several sockets on one UDP port gets a datagram: a classic BPF program for
SO_REUSEPORT groups (SO_ATTACH_REUSEPORT_CBPF), as QUIC servers steer by connection ID.

The kernel runs it on every datagram with the packet's data starting at the UDP payload
and uses what it returns as an index into the group, in the order its sockets were
bound (an index past the end falls back to the kernel's own hash):

  ldb [0]                  the message type
  jeq #RELAYED, 1, 0       RELAYED: forward work, which any worker does (skip the ret)
  ret #0                   anything else (joins, pings, control): the first socket, the
                           relay's own, which holds the sessions
  ldh [net + 20]           the UDP source port (IPv4 without options): one node's datagrams
  mod #N                   stay on one worker, in order
  ret a

Steering only spreads the relay's work: a worker hands the main socket whatever it
cannot forward, so nothing depends on the program being there or right.

A node's workers (node_program) are steered by lane, the top byte of a DATA message's
counter (proto/session.py), so that each lane's replay window lives in one process:

  ldb [0]                  the message type
  jeq #RELAYED, 0, +4      RELAYED: is it DATA inside?
  ldb [8]
  jeq #DATA, 0, +6         no: the node's process
  ldb [16]                 yes: its lane
  ja +2
  jeq #DATA, 0, +3         direct DATA: its lane; anything else the node's process
  ldb [8]
  mod #N                   lane mod N: lane 0 (and N, 2N...) is the node's process
  ret a
  ret #0

(A load past the datagram's end returns 0: the node's process, which drops it.) Here the
program is not optional: a node that cannot attach it runs with one worker.
"""

from __future__ import annotations

import ctypes
import socket
import struct

from ..proto import wire

SO_ATTACH_REUSEPORT_CBPF = 51
_SKF_NET_OFF = -0x100000
_INSN = struct.Struct("=HBBI")


def program(workers: int) -> list[tuple[int, int, int, int]]:
    return [
        (0x30, 0, 0, 0),                                   # ldb [0]
        (0x15, 1, 0, wire.RELAYED),                        # jeq #RELAYED: skip one; else next
        (0x06, 0, 0, 0),                                   # ret #0
        (0x28, 0, 0, (_SKF_NET_OFF + 20) & 0xFFFFFFFF),   # ldh [net + 20]
        (0x94, 0, 0, workers),                             # mod #workers
        (0x16, 0, 0, 0),                                   # ret a
    ]


def node_program(workers: int) -> list[tuple[int, int, int, int]]:
    return [
        (0x30, 0, 0, 0),                # ldb [0]
        (0x15, 0, 4, wire.RELAYED),     # jeq #RELAYED
        (0x30, 0, 0, 8),                # ldb [8]
        (0x15, 0, 6, wire.DATA),        # jeq #DATA, else ret #0
        (0x30, 0, 0, 16),               # ldb [16]
        (0x05, 0, 0, 2),                # ja mod
        (0x15, 0, 3, wire.DATA),        # jeq #DATA, else ret #0
        (0x30, 0, 0, 8),                # ldb [8]
        (0x94, 0, 0, workers),          # mod #workers
        (0x16, 0, 0, 0),                # ret a
        (0x06, 0, 0, 0),                # ret #0
    ]


def attach(sock: socket.socket, workers: int, node: bool = False) -> bool:
    """Attach the program to sock's reuseport group; False where the kernel refuses it."""
    insns = node_program(workers) if node else program(workers)
    buf = ctypes.create_string_buffer(b"".join(_INSN.pack(*i) for i in insns))
    fprog = struct.pack("HxxxxxxQ", len(insns), ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
        return True
    except OSError:
        return False
