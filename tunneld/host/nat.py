"""Source NAT on a gateway node, for the prefixes it advertises.

A member that accepts a gateway's routes sends into, say, the pod network through
the gateway; but a pod on another node would answer from that node, and the
member takes those sources only from the gateway. So the gateway masquerades
overlay traffic entering its prefixes (as Tailscale's subnet routers do by
default), and the answers return the way the requests came.

tunneld keeps its rule in a table of its own, `ip tunneld`, replaced atomically
with `nft -f`; it never touches other tables. Forwarding must be on, so it is
turned on (net.ipv4.ip_forward) when a node advertises routes.
"""

from __future__ import annotations

import shutil

from ..errors import ConfigError, HostError
from .firewall import nft

TABLE = "tunneld"


def check_available() -> None:
    if shutil.which("nft") is None:
        raise ConfigError("--advertise-routes masquerades through nftables, and 'nft' is not installed: "
                          "install nftables, or pass --no-snat-routes and route the replies yourself")


def masquerade(overlay: str, prefixes: list[str], ifname: str) -> None:
    ruleset = (
        f"table ip {TABLE}\n"
        f"delete table ip {TABLE}\n"  # creating and deleting first makes the whole file a replace
        f"table ip {TABLE} {{\n"
        f"  chain postrouting {{\n"
        f"    type nat hook postrouting priority srcnat; policy accept;\n"
        f"    ip saddr {overlay} ip daddr {{ {', '.join(prefixes)} }} oifname != \"{ifname}\" masquerade\n"
        f"  }}\n"
        f"}}\n"
    )
    _nft(ruleset)


def remove() -> None:
    _nft(f"table ip {TABLE}\ndelete table ip {TABLE}\n")


def enable_forwarding(ipv6: bool = False) -> bool:
    """Turn IPv4 (or IPv6) forwarding on; True if it was off."""
    path = "/proc/sys/net/ipv6/conf/all/forwarding" if ipv6 else "/proc/sys/net/ipv4/ip_forward"
    try:
        with open(path) as f:
            if f.read().strip() == "1":
                return False
        with open(path, "w") as f:
            f.write("1")
    except OSError as exc:
        raise HostError(f"cannot turn on IPv{6 if ipv6 else 4} forwarding for the advertised routes: "
                        f"{exc.strerror}") from None
    return True


def _nft(ruleset: str) -> None:
    nft(ruleset, "tunneld's NAT rule")
