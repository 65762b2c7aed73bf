"""What `tunneld doctor` looks at on this host (doctor.py judges it): links, addresses,
routes and flannel's VXLAN device through netlink (links.py), a few sysctls, kubelet's
configured --node-ip, the resolvers. Read only; nothing here changes the host.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil

from ..errors import HostError
from .links import Links

KUBELET_FILES = ("/etc/default/kubelet", "/etc/sysconfig/kubelet", "/var/lib/kubelet/kubeadm-flags.env")
RESOLV_FILES = ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf")
NODE_IP = re.compile(r"--node-ip[= ]+([0-9A-Fa-f.:,]+)")


def _read(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def sysctl(path: str) -> str | None:
    text = _read(os.path.join("/proc/sys", path)).strip()
    return text or None


def kubelet_node_ips() -> list[tuple[str, str]]:
    """(where, value) of every --node-ip kubelet is configured or running with."""
    found = [(path, m.group(1)) for path in KUBELET_FILES for m in NODE_IP.finditer(_read(path))]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        argv = _read(f"/proc/{pid}/cmdline").split("\0")
        if argv and os.path.basename(argv[0]) == "kubelet":
            found += [(f"the running kubelet (pid {pid})", m.group(1)) for m in NODE_IP.finditer(" ".join(argv))]
    return found


def resolvers() -> list[tuple[str, str]]:
    out = []
    for path in RESOLV_FILES:
        for line in _read(path).splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                out.append((path, parts[1]))
    return out


def gather(status: dict | None, interface: str, state_dir: str) -> dict:
    """Everything doctor.py's checks read, for the node (or relay) whose status is given."""
    facts = {"status": status, "interface": interface, "ip_forward": sysctl("net/ipv4/ip_forward"),
             "rp_filter": sysctl(f"net/ipv4/conf/{interface}/rp_filter"),
             "rp_filter_all": sysctl("net/ipv4/conf/all/rp_filter"),
             "kubelet": kubelet_node_ips(), "resolvers": resolvers(), "routes_elsewhere": []}
    try:
        facts["disk_free"] = shutil.disk_usage(state_dir).free
    except OSError:
        facts["disk_free"] = None
    with Links() as links:
        facts["links"] = links.details()
        facts["addresses"] = links.all_addresses()
        if status and status.get("role") == "node":
            wanted = [p["address"] for p in status.get("peers", ()) if p.get("address")]
            wanted += [str(ipaddress.ip_network(r).network_address) for r in status.get("accepted_routes", ())]
            for address in wanted:
                try:
                    dev = links.route_to(address).ifname
                except HostError:
                    dev = None
                if dev != interface:
                    facts["routes_elsewhere"].append((address, dev))
    return facts
