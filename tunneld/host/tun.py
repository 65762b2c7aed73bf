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
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
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

    @classmethod
    def open(cls, name: str, persist: bool = True, offload: str = "all") -> "Tun":
        """offload: "all" (TCP segmentation, and UDP-tunnel segmentation where the kernel
        takes it), "tcp" (TCP only), "none"."""
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
        # Checksums and TCP segmentation are left to us: big reads, and the kernel stops
        # cutting TCP into MTU-sized packets only for us to encrypt each. A kernel without
        # UDP-tunnel offload refuses its flags (EINVAL): then TCP alone, as before.
        tcp = TUN_F_CSUM | TUN_F_TSO4
        if offload == "all" and _offload(fd, tcp | TUN_F_UDP_TUNNEL_GSO | TUN_F_UDP_TUNNEL_GSO_CSUM, VNET_TNL_LEN):
            return cls(fd, name, True, True)
        if offload in ("all", "tcp") and _offload(fd, tcp, VNET_HDR_LEN):
            return cls(fd, name, True)
        _offload(fd, 0, VNET_HDR_LEN)
        return cls(fd, name)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _offload(fd: int, flags: int, vnet_len: int) -> bool:
    """Ask for these offloads with headers of vnet_len bytes; False, and nothing changed
    that matters, if the kernel refuses."""
    try:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", vnet_len))
        fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
        return True
    except OSError:
        return False
