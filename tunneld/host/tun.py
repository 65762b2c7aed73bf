"""The TUN device: open (or re-attach to) a persistent layer-3 interface.

Persistent, so that a restart of `tunneld join` keeps the interface, its
address and everything the kernel has bound to it (flannel.1 is created with
`dev tunneld0`; recreating the interface would silently break it).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct

from ..engine.offload import VNET_HDR_LEN
from ..engine.tunnel_split import VNET_TNL_LEN
from ..errors import ConfigError, HostError

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
MAX_QUEUES = 256  # the kernel's limit per device
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04  # IPv6 inside the overlay (offload.py splits both)
TUN_F_UDP_TUNNEL_GSO = 0x080  # Linux 6.17 on: VXLAN super-packets (engine/tunnel_split.py)
TUN_F_UDP_TUNNEL_GSO_CSUM = 0x100
OFFLOADS = ("all", "tcp", "none")  # what Tun.open asks the kernel for (TUNNELD_OFFLOAD)
IFNAMSIZ = 16


def check_interface_name(name: str) -> str:
    if not name or len(name) >= IFNAMSIZ or "/" in name or any(c.isspace() for c in name) or name in (".", ".."):
        raise ConfigError(f"--interface {name!r} is not a valid interface name (1-15 characters, no '/' or spaces)")
    return name


class Tun:
    """Every read and write on fd carries a virtio-net header first (engine/offload.py), of
    vnet_len bytes; with `offload` the kernel also hands over TCP segments of up to 64 KB,
    with `tunnel` VXLAN super-packets too."""

    def __init__(self, fd: int, name: str, offload: bool = False, tunnel: bool = False):
        self.fd = fd
        self.name = name
        self.offload = offload
        self.tunnel = tunnel
        self.vnet_len = VNET_TNL_LEN if tunnel else VNET_HDR_LEN
        self.queues: list[int] = []  # more queues of a multi-queue device: one per worker
        self.multiqueue = False
        self._claim: socket.socket | None = None

    @classmethod
    def open(cls, name: str, persist: bool = True, offload: str = "all", queues: int = 1) -> "Tun":
        """offload: "all" (TCP segmentation, and UDP-tunnel segmentation where the kernel
        takes it), "tcp" (TCP only), "none". queues: more than one makes (or needs) a
        multi-queue device; one that exists single-queue (made by tunneld 0.3.0 or before)
        is opened as it is, with one queue: the caller sees len(queues) + 1."""
        check_interface_name(name)
        claim = _claim(name)
        try:
            tun, multi = cls._attach(name, persist, queues > 1)
        except BaseException:
            claim.close()
            raise
        tun._claim = claim
        tun.multiqueue = multi
        tun._offload(offload)
        try:
            for _ in range(min(queues, MAX_QUEUES) - 1 if multi else 0):
                tun.queues.append(_open_queue(name, IFF_MULTI_QUEUE)[0])
        except OSError as exc:
            tun.close()
            raise HostError(f"cannot open another queue of {name}: {exc.strerror}") from None
        return tun

    @classmethod
    def _attach(cls, name: str, persist: bool, multi: bool) -> tuple["Tun", bool]:
        # The other kind is tried when the device exists as it: its queues are fixed at creation.
        try:
            fd, multi = _open_queue(name, IFF_MULTI_QUEUE if multi else 0)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise _error(name, exc) from None
            try:
                fd, multi = _open_queue(name, 0 if multi else IFF_MULTI_QUEUE)
            except OSError as exc2:
                raise _error(name, exc2) from None
        try:
            if persist:
                fcntl.ioctl(fd, TUNSETPERSIST, 1)
        except OSError as exc:
            os.close(fd)
            raise _error(name, exc) from None
        return cls(fd, name), multi

    def _offload(self, offload: str) -> None:
        fd = self.fd
        # Checksums and TCP segmentation are left to us: big reads, and the kernel stops
        # cutting TCP into MTU-sized packets only for us to encrypt each. A kernel without
        # UDP-tunnel offload refuses its flags (EINVAL): then TCP alone, as before.
        # (Both settings are the device's: every queue reads and writes alike.)
        # IPv6 TCP (TSO6) only without UDP-tunnel offload: with both, the kernel would hand
        # over VXLAN super-packets carrying IPv6 TCP (flannel-v6.1's), which offload.py does
        # not cut; without TSO6 it segments those itself.
        tcp = TUN_F_CSUM | TUN_F_TSO4
        if offload == "all" and _offload(fd, tcp | TUN_F_UDP_TUNNEL_GSO | TUN_F_UDP_TUNNEL_GSO_CSUM, VNET_TNL_LEN):
            self.offload = self.tunnel = True
        elif offload in ("all", "tcp") and _offload(fd, tcp | TUN_F_TSO6, VNET_HDR_LEN):
            self.offload = True
        else:
            _offload(fd, 0, VNET_HDR_LEN)
        self.vnet_len = VNET_TNL_LEN if self.tunnel else VNET_HDR_LEN

    def close(self) -> None:
        for fd in self.queues:
            os.close(fd)
        self.queues = []
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._claim is not None:
            self._claim.close()
            self._claim = None


def _claim(name: str) -> socket.socket:
    """One tunneld per interface and network namespace: a multi-queue device takes any
    number of readers, so the kernel no longer says EBUSY. An abstract socket's name is
    per namespace, needs no file, and goes with the process."""
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        claim.bind(f"\0tunneld/{name}".encode())
    except OSError:
        claim.close()
        raise HostError(f"interface {name} is in use by another process (is another tunneld join running?)") from None
    return claim


def _open_queue(name: str, multi: int) -> tuple[int, bool]:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise HostError("/dev/net/tun is missing: load the tun module ('modprobe tun')") from None
    except PermissionError:
        raise HostError("no access to /dev/net/tun: run as root or grant CAP_NET_ADMIN "
                        "and DeviceAllow=/dev/net/tun") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR | multi))
    except OSError:
        os.close(fd)
        raise
    return fd, bool(multi)


def _error(name: str, exc: OSError) -> HostError:
    if exc.errno == errno.EBUSY:
        return HostError(f"interface {name} is in use by another process (is another tunneld join running?)")
    if exc.errno == errno.EPERM:
        return HostError(f"not allowed to create {name}: tunneld needs CAP_NET_ADMIN")
    if exc.errno == errno.EINVAL:
        return HostError(f"interface {name} exists and is not a tunneld TUN device; "
                         "delete it or choose another --interface")
    return HostError(f"cannot create interface {name}: {exc.strerror}")


def _offload(fd: int, flags: int, vnet_len: int) -> bool:
    """Ask for these offloads with headers of vnet_len bytes; False, and nothing changed
    that matters, if the kernel refuses."""
    try:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", vnet_len))
        fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
        return True
    except OSError:
        return False
