"""Links, addresses and routes, through netlink (pyroute2). tunneld never runs `ip`.

The narrow interface the daemons use:
  configure(ifname, interface, mtu)  the overlay address on the TUN, its MTU, link up
  set_mtu(ifname, mtu)               a new MTU for it
  set_routes(ifname, prefixes)       exactly these prefixes through it (tunneld's routes only)
  route_to(address)                  which interface and MTU the kernel uses to reach it
  local_mtu(address)                 the MTU of the interface holding address (or of the
                                     default route's, for 0.0.0.0 and ::)
Configuration is idempotent: an address already in place is left alone, because
deleting and re-adding it would flush routes that others (flannel) hang on it.

pyroute2 drives an asyncio loop of its own, which must never meet the daemon's
(uv)loop; so every netlink call runs on one thread kept for it. The calls are
rare (start-up, a new address) and short, so the caller simply waits.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import HostError

RTPROT_TUNNELD = 199  # marks the routes tunneld installs, so that it only ever removes its own
TXQUEUELEN = 1000
IPV6_MIN_MTU = 1280  # below it the kernel takes IPv6 off a link
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40


@dataclass(frozen=True)
class Route:
    ifname: str
    mtu: int  # the smaller of the link MTU and any MTU on the route or in the PMTU cache
    source: str | None
    gateway: str | None


def _attr(msg, name, default=None):
    value = msg.get_attr(name)
    return default if value is None else value


class Links:
    def __init__(self):
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="netlink")
        self._ipr = self._call(IPRoute)

    def _call(self, fn, *args, **kwargs):
        return self._thread.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._call(self._ipr.close)
        self._thread.shutdown()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def index(self, ifname: str) -> int:
        return self._call(self._index, ifname)

    def addresses(self, ifname: str) -> list[ipaddress.IPv4Interface]:
        return self._call(self._addresses, ifname)

    def addresses6(self, ifname: str) -> list[ipaddress.IPv6Address]:
        """The interface's global IPv6 addresses (no link-local, none still in DAD)."""
        return self._call(self._addresses6, ifname)

    def configure(self, ifname: str, interface: ipaddress.IPv4Interface, mtu: int,
                  interface6: ipaddress.IPv6Interface | None = None) -> bool:
        """tunneld0 up with these addresses and MTU; False if it has no IPv6 (none given, or an
        MTU below IPv6's 1280)."""
        return self._call(self._configure, ifname, interface, mtu, interface6)

    def route_to(self, address: str) -> Route:
        return self._call(self._route_to, address)

    def set_mtu(self, ifname: str, mtu: int) -> None:
        self._call(self._set_mtu, ifname, mtu)

    def set_routes(self, ifname: str, prefixes: list[str]) -> None:
        self._call(self._set_routes, ifname, prefixes)

    def routes(self, ifname: str) -> list[str]:
        return self._call(self._routes, ifname)

    def local_mtu(self, address: str) -> int | None:
        return self._call(self._local_mtu, address)

    def details(self) -> dict:
        """Every link: {name: {index, up, mtu, master, kind, vxlan_link, vxlan_local}} (doctor)."""
        return self._call(self._details)

    def all_addresses(self) -> dict[str, list[str]]:
        """Every interface's addresses (IPv4 and IPv6), by interface name."""
        return self._call(self._all_addresses)

    def claims(self, exclude: str) -> list[tuple[str, str]]:
        """What the host already has, outside exclude (tunneld0): (what it is, prefix) for
        every address and every route, IPv4 and IPv6; an overlay network must stay clear of them."""
        return self._call(self._claims, exclude)

    def connected_networks(self, exclude: str) -> list[str]:
        """The networks (IPv4, and global IPv6) of every interface but exclude (tunneld0): what the host reaches
        without a router, and no overlay route may take over."""
        return self._call(self._connected_networks, exclude)

    def delete(self, ifname: str) -> None:
        self._call(self._delete, ifname)

    # -- on the netlink thread ---------------------------------------------------------

    def _index(self, ifname: str) -> int:
        found = self._ipr.link_lookup(ifname=ifname)
        if not found:
            raise HostError(f"interface {ifname} does not exist")
        return found[0]

    def _link_mtu(self, ifname: str) -> int:
        return int(_attr(self._ipr.get_links(self._index(ifname))[0], "IFLA_MTU"))

    def _addresses(self, ifname: str) -> list[ipaddress.IPv4Interface]:
        out = []
        for msg in self._ipr.get_addr(index=self._index(ifname), family=socket.AF_INET):
            out.append(ipaddress.IPv4Interface(f"{_attr(msg, 'IFA_ADDRESS')}/{msg['prefixlen']}"))
        return out

    def _addresses6(self, ifname: str) -> list[ipaddress.IPv6Address]:
        out = []
        for msg in self._ipr.get_addr(index=self._index(ifname), family=socket.AF_INET6):
            flags = _attr(msg, "IFA_FLAGS") or msg["flags"]
            if msg["scope"] == 0 and not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED):
                out.append(ipaddress.IPv6Address(_attr(msg, "IFA_ADDRESS")))
        return out

    def _configure(self, ifname: str, interface: ipaddress.IPv4Interface, mtu: int,
                   interface6: ipaddress.IPv6Interface | None) -> bool:
        idx = self._index(ifname)
        try:
            if self._link_mtu(ifname) != mtu:
                self._ipr.link("set", index=idx, mtu=mtu)
            # A TUN queue of 500 (the kernel's default) overflows under one TCP stream of pod
            # traffic, which arrives per packet; 1000 is what Ethernet devices get.
            self._ipr.link("set", index=idx, txqlen=TXQUEUELEN)
            # The address alone (/32): a prefix would route the overlay's whole range through
            # tunneld0, and clouds keep their own DNS and metadata in 100.64.0.0/10. Each peer
            # gets a route of its own (set_routes).
            own = ipaddress.IPv4Interface(f"{interface.ip}/32")
            for present in self._addresses(ifname):
                if present != own:
                    self._ipr.addr("del", index=idx, address=str(present.ip), prefixlen=present.network.prefixlen)
            if own not in self._addresses(ifname):
                self._ipr.addr("add", index=idx, address=str(own.ip), prefixlen=32)
            v6 = interface6 is not None and mtu >= IPV6_MIN_MTU
            _ipv6_sysctls(ifname, v6)  # before the link comes up, or the kernel sends a router solicitation
            self._ipr.link("set", index=idx, state="up")
            if v6:
                self._address6(idx, ifname, interface6)
        except NetlinkError as exc:
            raise HostError(f"cannot configure {ifname}: {os.strerror(exc.code)}") from None
        return v6

    def _address6(self, idx: int, ifname: str, interface6: ipaddress.IPv6Interface) -> None:
        """The IPv6 overlay address with its prefix (the prefix's route goes through tunneld0:
        a random unique local /64 clashes with nothing), and no other global one."""
        have = [(_attr(m, "IFA_ADDRESS"), m["prefixlen"]) for m in self._ipr.get_addr(index=idx, family=socket.AF_INET6)]
        for address, length in have:
            if (address, length) != (str(interface6.ip), interface6.network.prefixlen):
                self._ipr.addr("del", index=idx, address=address, prefixlen=length)
        if (str(interface6.ip), interface6.network.prefixlen) not in have:
            # nodad: the address is ours alone (bound to our key), and usable at once
            self._ipr.addr("add", index=idx, address=str(interface6.ip), prefixlen=interface6.network.prefixlen,
                           flags=IFA_F_NODAD)

    def _route_to(self, address: str) -> Route:
        try:
            msg = self._ipr.route("get", dst=address)[0]
        except NetlinkError as exc:
            raise HostError(f"no route to {address}: {os.strerror(exc.code)}") from None
        link = self._ipr.get_links(_attr(msg, "RTA_OIF"))[0]
        mtu = int(_attr(link, "IFLA_MTU"))
        metrics = msg.get_attr("RTA_METRICS")
        if metrics is not None:
            route_mtu = metrics.get_attr("RTAX_MTU")
            if route_mtu:
                mtu = min(mtu, int(route_mtu))
        return Route(_attr(link, "IFLA_IFNAME"), mtu, _attr(msg, "RTA_PREFSRC"), _attr(msg, "RTA_GATEWAY"))

    def _set_mtu(self, ifname: str, mtu: int) -> None:
        try:
            self._ipr.link("set", index=self._index(ifname), mtu=mtu)
        except NetlinkError as exc:
            raise HostError(f"cannot set the MTU of {ifname} to {mtu}: {os.strerror(exc.code)}") from None

    def _routes(self, ifname: str) -> list[str]:
        idx = self._index(ifname)
        out = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self._ipr.get_routes(family=family, oif=idx, proto=RTPROT_TUNNELD):
                if _attr(msg, "RTA_OIF") == idx and msg["proto"] == RTPROT_TUNNELD:
                    out.append(f"{_attr(msg, 'RTA_DST')}/{msg['dst_len']}")
        return sorted(out)

    def _set_routes(self, ifname: str, prefixes: list[str]) -> None:
        idx = self._index(ifname)
        want = set(prefixes)
        have = set(self._routes(ifname))
        try:
            for prefix in sorted(have - want):
                dst, length = prefix.split("/")
                self._ipr.route("del", dst=dst, dst_len=int(length), oif=idx, proto=RTPROT_TUNNELD,
                                family=socket.AF_INET6 if ":" in dst else socket.AF_INET)
            for prefix in sorted(want - have):
                dst, length = prefix.split("/")
                self._ipr.route("replace", dst=dst, dst_len=int(length), oif=idx, proto=RTPROT_TUNNELD,
                                family=socket.AF_INET6 if ":" in dst else socket.AF_INET)
        except NetlinkError as exc:
            raise HostError(f"cannot set the routes through {ifname}: {os.strerror(exc.code)}") from None

    def _local_mtu(self, address: str) -> int | None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        if address in ("0.0.0.0", "::"):
            defaults = self._ipr.get_default_routes(family=family)
            oifs = [_attr(r, "RTA_OIF") for r in defaults if _attr(r, "RTA_OIF")]
        else:
            oifs = [m["index"] for m in self._ipr.get_addr(family=family, address=address)]
        mtus = [int(_attr(self._ipr.get_links(i)[0], "IFLA_MTU")) for i in oifs]
        return min(mtus) if mtus else None

    def _all_addresses(self) -> dict[str, list[str]]:
        names = self._names()
        out: dict[str, list[str]] = {}
        for msg in self._ipr.get_addr():
            out.setdefault(names.get(msg["index"], "?"), []).append(_attr(msg, "IFA_ADDRESS"))
        return out

    def _details(self) -> dict:
        out = {}
        for link in self._ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
            data = info.get_attr("IFLA_INFO_DATA") if kind == "vxlan" else None
            out[_attr(link, "IFLA_IFNAME")] = {
                "index": link["index"], "up": bool(link["flags"] & 1), "mtu": _attr(link, "IFLA_MTU"),
                "master": _attr(link, "IFLA_MASTER"), "kind": kind,
                "vxlan_link": data.get_attr("IFLA_VXLAN_LINK") if data is not None else None,
                "vxlan_local": data.get_attr("IFLA_VXLAN_LOCAL") if data is not None else None}
        return out

    def _names(self) -> dict[int, str]:
        return {link["index"]: _attr(link, "IFLA_IFNAME") for link in self._ipr.get_links()}

    def _addresses_but(self, exclude: str) -> list[tuple[str, ipaddress.IPv4Interface]]:
        """(interface, address with its prefix) of every IPv4 address not on exclude."""
        names = self._names()
        return [(names.get(msg["index"]), ipaddress.IPv4Interface(f"{_attr(msg, 'IFA_ADDRESS')}/{msg['prefixlen']}"))
                for msg in self._ipr.get_addr(family=socket.AF_INET) if names.get(msg["index"]) != exclude]

    def _connected_networks(self, exclude: str) -> list[str]:
        """The networks of every address not on exclude: IPv4, and global IPv6."""
        names = self._names()
        six = {str(ipaddress.IPv6Interface(f"{_attr(m, 'IFA_ADDRESS')}/{m['prefixlen']}").network)
               for m in self._ipr.get_addr(family=socket.AF_INET6) if m["scope"] == 0 and names.get(m["index"]) != exclude}
        return sorted({str(a.network) for _, a in self._addresses_but(exclude)}) + sorted(six)

    def _claims(self, exclude: str) -> list[tuple[str, str]]:
        out = [(f"the address {a.ip} on {name}", f"{a.ip}/32") for name, a in self._addresses_but(exclude)]
        names = self._names()
        for msg in self._ipr.get_addr(family=socket.AF_INET6):
            if names.get(msg["index"]) != exclude:
                address = _attr(msg, "IFA_ADDRESS")
                out.append((f"the address {address} on {names.get(msg['index'])}", f"{address}/128"))
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in self._ipr.get_routes(family=family, table=254):
                name = names.get(_attr(msg, "RTA_OIF"))
                if msg["dst_len"] and name != exclude and msg["proto"] != RTPROT_TUNNELD:
                    prefix = f"{_attr(msg, 'RTA_DST')}/{msg['dst_len']}"
                    out.append((f"the route {prefix} via {name}", prefix))
        return out

    def _delete(self, ifname: str) -> None:
        try:
            self._ipr.link("del", index=self._index(ifname))
        except NetlinkError as exc:
            raise HostError(f"cannot delete {ifname}: {os.strerror(exc.code)}") from None


def _ipv6_sysctls(ifname: str, enable: bool) -> None:
    """IPv6 on tunneld0 only with an overlay address, and then without what a LAN needs
    (a link-local address, router solicitations, autoconfiguration): nothing but the
    overlay's own packets leave by it."""
    base = f"/proc/sys/net/ipv6/conf/{ifname}/"
    settings = ([("addr_gen_mode", "1"), ("accept_ra", "0"), ("autoconf", "0"), ("router_solicitations", "0"),
                 ("disable_ipv6", "0")] if enable else [("disable_ipv6", "1")])
    for name, value in settings:
        try:
            with open(base + name, "w") as f:
                f.write(value)
        except OSError:
            pass
