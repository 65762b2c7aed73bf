"""What `tunneld doctor` looks at on this host (doctor.py judges it): links, addresses,
routes and flannel's VXLAN device through netlink (links.py), a few sysctls, kubelet's
configured --node-ip, the resolvers; on a node, whether full-size packets with DF set reach
the relay (ping); on a relay, its sockets and firewall rules that drop its port. Read only:
nothing here changes the host.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess

from ..engine.inner import IPV6_EXTRA
from ..engine.routes import OVERHEAD
from ..errors import HostError
from ..proto import endpoint
from . import firewall
from .links import Links

KUBELET_FILES = ("/etc/default/kubelet", "/etc/sysconfig/kubelet", "/var/lib/kubelet/kubeadm-flags.env")
RESOLV_FILES = ("/etc/resolv.conf", "/run/systemd/resolve/resolv.conf")
NODE_IP = re.compile(r"--node-ip[= ]+([0-9A-Fa-f.:,]+)")
MTU_SAID = re.compile(r"mtu ?= ?(\d+)")  # ping: "Frag needed and DF set (mtu = 1400)", "message too long, mtu=1400"


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


def df_probe(address: str, size: int) -> dict:
    """Whether size-byte packets with DF set reach address (IPv4 or IPv6) and come back (ICMP echo).
    ok None: not known (no ping, or the host answers no ping at all); mtu: what an ICMP
    error on the way, or the kernel's cached path MTU, said."""
    def ping(*extra: str):
        try:
            return subprocess.run(["ping", "-n", "-c", "2", "-i", "0.2", "-W", "1", *extra, address],
                                  capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
    out = {"address": address, "size": size, "ok": None, "mtu": None}
    if shutil.which("ping") is None:
        return out
    big = ping("-M", "do", "-s", str(size - (48 if ":" in address else 28)))  # the IP header, 8 bytes of ICMP
    if big is None:
        return out
    if big.returncode == 0:
        return {**out, "ok": True}
    said = MTU_SAID.search((big.stdout + big.stderr).decode(errors="replace"))
    if said:
        return {**out, "ok": False, "mtu": int(said.group(1))}
    small = ping()
    return {**out, "ok": False if small is not None and small.returncode == 0 else None}


def listening(port: int) -> dict:
    """Whether a UDP socket and a listening TCP socket hold port (any address, v4 or v6)."""
    found = {"udp": False, "tcp": False}
    for proto in ("udp", "tcp"):
        for name in (proto, proto + "6"):
            for line in _read(f"/proc/net/{name}").splitlines()[1:]:
                fields = line.split()
                if len(fields) > 3 and fields[1].rsplit(":", 1)[-1] == f"{port:04X}" and (
                        proto == "udp" or fields[3] == "0A"):  # 0A: LISTEN
                    found[proto] = True
    return found


def dropping(port: int) -> list[tuple[str, str]]:
    """(protocol, where) of each nftables rule (iptables' own included, as iptables-nft writes
    them) that drops or rejects packets to port: the relay's own firewall shutting it out."""
    out = []
    for item in firewall.read("list", "ruleset").get("nftables", ()):
        rule = item.get("rule")
        if not rule or not any("drop" in e or "reject" in e for e in rule.get("expr", ())):
            continue
        for e in rule["expr"]:
            m = e.get("match", {})
            left = m.get("left", {}).get("payload", {})
            if left.get("field") == "dport" and m.get("op") in ("==", "in") and _holds(m.get("right"), port):
                proto = left.get("protocol", "")
                out.append((proto if proto in ("udp", "tcp") else "udp and tcp",
                            f"table {rule.get('family')} {rule.get('table')}, chain {rule.get('chain')}"))
    return out


def _holds(right, port: int) -> bool:
    if isinstance(right, int):
        return right == port
    if isinstance(right, dict) and "set" in right:
        return any(_holds(r, port) for r in right["set"])
    if isinstance(right, dict) and "range" in right:
        lo, hi = right["range"]
        return isinstance(lo, int) and isinstance(hi, int) and lo <= port <= hi
    return False


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
    role = (status or {}).get("role")
    if role == "relay":
        port = int(str(status.get("listen", ":0")).rpartition(":")[2] or 0)
        facts["listening"], facts["dropping"] = listening(port), dropping(port)
    with Links() as links:
        facts["links"] = links.details()
        facts["addresses"] = links.all_addresses()
        relay_ep = endpoint.parse((status or {}).get("relay", {}).get("endpoint"))
        relay = relay_ep[0] if relay_ep else ""
        if role == "node" and relay and status.get("mtu"):
            facts["path_mtu"] = df_probe(relay, status["mtu"] + OVERHEAD + (IPV6_EXTRA if ":" in relay else 0))
            try:
                facts["path_mtu"]["gateway"] = links.route_to(relay).gateway
            except HostError:
                pass
        if role == "node":
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
