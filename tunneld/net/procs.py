"""Worker processes beside a daemon (the relay's, relay_workers.py; a node's, node_workers.py):
started with the sockets they serve, told things over a SOCK_SEQPACKET pair (one message
per record, never merged or split), and ended by closing our end of it.
"""

from __future__ import annotations

import socket
import subprocess
import sys

from .base import socket_buffers

HANDOFF_BUFFER = 4 << 20  # room for a burst handed over, as the UDP socket has; and the largest message


def spawn(module: str, args: list, fds: tuple) -> tuple[subprocess.Popen, socket.socket]:
    """python -m module ARGS... CONTROL_FD, with fds (and the control socket's end) passed on."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for end in (ours, theirs):
        socket_buffers(end, HANDOFF_BUFFER)
    fds = (*fds, theirs.fileno())
    proc = subprocess.Popen([sys.executable, "-m", module, *map(str, args), str(theirs.fileno())], pass_fds=fds)
    theirs.close()
    ours.setblocking(False)
    return proc, ours


def messages(ctl: socket.socket, buf: bytearray, limit: int):
    """Up to limit messages waiting on ctl; b"" (once, last) if the other end is gone."""
    view = memoryview(buf)
    for _ in range(limit):
        try:
            n = ctl.recv_into(buf)
        except BlockingIOError:
            return
        except OSError:
            n = 0
        if not n:
            yield b""
            return
        yield bytes(view[:n])


def broadcast(ctls: list, msg: bytes) -> None:
    """msg to every worker; a dead one's keeper has heard of it on reading (messages())."""
    for ctl in ctls:
        try:
            ctl.send(msg)
        except OSError:
            pass


def stop(loop, ctls: list, procs: list) -> None:
    """Close the control sockets (each worker ends on that) and wait for them, by PID."""
    for ctl in ctls:
        if loop is not None:
            loop.remove_reader(ctl.fileno())
        ctl.close()
    for proc in procs:
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(3)
