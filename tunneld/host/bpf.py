"""The bpf() system call, as much of it as tunneld uses: make a map, load a program.

Instructions are eBPF's 8-byte form (linux/bpf.h): an opcode, the destination and source
registers, a 16-bit offset and a 32-bit immediate. The helpers below name the few that
host/spread.py's program needs. Every call raises OSError with the kernel's errno (and,
for a program the verifier refuses, the end of its log) where the kernel says no.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

NR_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine())
MAP_CREATE, PROG_LOAD = 0, 5
MAP_ARRAY, MAP_LRU_HASH = 2, 9
PROG_SOCKET_FILTER = 1
LOOKUP, UPDATE = 1, 2  # helper ids: bpf_map_lookup_elem, bpf_map_update_elem
ATTR_SIZE = 128  # larger than the fields we set; the rest must be zero

_libc = ctypes.CDLL(None, use_errno=True)
_INSN = struct.Struct("=BBhi")


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return _INSN.pack(code, (src << 4) | dst, off, imm)


# the opcodes used (class | size/op | source)
def mov(dst, src):          return insn(0xBF, dst, src)                    # dst = src
def mov_imm(dst, imm):      return insn(0xB7, dst, imm=imm)                 # dst = imm
def add_imm(dst, imm):      return insn(0x07, dst, imm=imm)                 # dst += imm
def and_imm(dst, imm):      return insn(0x57, dst, imm=imm)                 # dst &= imm
def lsh_imm(dst, imm):      return insn(0x67, dst, imm=imm)                 # dst <<= imm
def rsh_imm(dst, imm):      return insn(0x77, dst, imm=imm)                 # dst >>= imm
def ld_abs(size, off):      return insn({1: 0x30, 2: 0x28, 4: 0x20}[size], imm=off)  # r0 = packet[off]
def ld_ind(size, src, off): return insn({1: 0x50, 2: 0x48, 4: 0x40}[size], src=src, imm=off)
def ldx_w(dst, src, off):   return insn(0x61, dst, src, off)               # dst = *(u32 *)(src + off)
def stx_w(dst, off, src):   return insn(0x63, dst, src, off)               # *(u32 *)(dst + off) = src
def st_w(dst, off, imm):    return insn(0x62, dst, off=off, imm=imm)        # *(u32 *)(dst + off) = imm
def fetch_add_w(dst, off, src): return insn(0xC3, dst, src, off, 0x01)     # src = atomic add, the old value
def jeq_imm(dst, imm, off): return insn(0x15, dst, off=off, imm=imm)        # if dst == imm: skip off
def jne_imm(dst, imm, off): return insn(0x55, dst, off=off, imm=imm)
def ja(off):                return insn(0x05, off=off)                      # skip off
def call(helper):           return insn(0x85, imm=helper)
def exit_():                return insn(0x95)


def ld_map(dst: int, fd: int) -> bytes:
    """dst = the map fd refers to (two instructions)."""
    return insn(0x18, dst, 1, imm=fd) + insn(0)


def _bpf(cmd: int, attr: bytes) -> int:
    if NR_BPF is None:
        raise OSError(95, f"no bpf() system call number known for {platform.machine()}")
    buf = ctypes.create_string_buffer(attr.ljust(ATTR_SIZE, b"\0"), ATTR_SIZE)
    fd = _libc.syscall(NR_BPF, cmd, buf, ATTR_SIZE)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def map_create(kind: int, key_size: int, value_size: int, entries: int) -> int:
    return _bpf(MAP_CREATE, struct.pack("=IIIII", kind, key_size, value_size, entries, 0))


def prog_load(kind: int, code: bytes) -> int:
    lic = ctypes.create_string_buffer(b"Apache-2.0")  # it calls no GPL-only helper
    prog = ctypes.create_string_buffer(code, len(code))
    head = struct.pack("=IIQQ", kind, len(code) // 8, ctypes.addressof(prog), ctypes.addressof(lic))
    try:
        return _bpf(PROG_LOAD, head)
    except OSError as exc:  # again, for the verifier's reason
        log = ctypes.create_string_buffer(1 << 16)
        try:
            return _bpf(PROG_LOAD, head + struct.pack("=IIQ", 1, len(log), ctypes.addressof(log)))
        except OSError:
            pass
        said = log.value.decode(errors="replace").strip().splitlines()
        raise OSError(exc.errno, f"{exc.strerror}: {said[-1] if said else 'the verifier said nothing'}") from None
