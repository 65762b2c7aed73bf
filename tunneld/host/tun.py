"""The TUN device: open (or re-attach to) a persistent layer-3 interface.

Persistent, so that a restart of `tunneld join` keeps the interface, its
address and everything the kernel has bound to it (flannel.1 is created with
`dev tunneld0`; recreating the interface would silently break it).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from ..errors import ConfigError, HostError

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
IFNAMSIZ = 16


def check_interface_name(name: str) -> str:
    if not name or len(name) >= IFNAMSIZ or "/" in name or any(c.isspace() for c in name) or name in (".", ".."):
        raise ConfigError(f"--interface {name!r} is not a valid interface name (1-15 characters, no '/' or spaces)")
    return name


class Tun:
    """Every read and write on fd carries a virtio-net header first (engine/offload.py);
    with `offload` the kernel also hands over TCP segments of up to 64 KB."""

    def __init__(self, fd: int, name: str, offload: bool = False):
        self.fd = fd
        self.name = name
        self.offload = offload

    @classmethod
    def open(cls, name: str, persist: bool = True, offload: bool = True) -> "Tun":
        check_interface_name(name)
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise HostError("/dev/net/tun is missing: load the tun module ('modprobe tun')") from None
        except PermissionError:
            raise HostError("no access to /dev/net/tun: run as root or grant CAP_NET_ADMIN "
                            "and DeviceAllow=/dev/net/tun") from None
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
            if persist:
                fcntl.ioctl(fd, TUNSETPERSIST, 1)
        except OSError as exc:
            os.close(fd)
            if exc.errno == errno.EBUSY:
                raise HostError(f"interface {name} is in use by another process "
                                "(is another tunneld join running?)") from None
            if exc.errno == errno.EPERM:
                raise HostError(f"not allowed to create {name}: tunneld needs CAP_NET_ADMIN") from None
            if exc.errno == errno.EINVAL:
                raise HostError(f"interface {name} exists and is not a tunneld TUN device; "
                                "delete it or choose another --interface") from None
            raise HostError(f"cannot create interface {name}: {exc.strerror}") from None
        try:
            # Checksums and TCP segmentation are left to us: big reads, and the kernel
            # stops cutting TCP into MTU-sized packets only for us to encrypt each.
            fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 if offload else 0)
            offloaded = offload
        except OSError:
            offloaded = False
        return cls(fd, name, offloaded)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
