"""What kubelet and flannel need from tunneld on this node.

node_ip_problem() applies kubelet's own check of --node-ip (validateNodeIP in the
kubelet): not loopback, multicast, link-local or unspecified, and an address of a
local interface. kube_env() writes the settings as KEY='value' lines that both a
shell (`. file`, `eval`) and a systemd EnvironmentFile= read the same way: in single quotes
neither expands nor escapes anything, and no value may hold a quote, a backslash or a line
break (the node name came from the relay: it is checked here too, not trusted).
"""

from __future__ import annotations

import ipaddress
import json
import re

from .engine.mss import VXLAN_OVERHEAD

VXLAN_OVERHEAD6 = VXLAN_OVERHEAD + 20  # flannel's IPv6 VXLAN: an IPv6 outer header is 20 bytes longer
from .errors import ConfigError, TunneldError
from .proto.messages import valid_name

FLANNEL_ANNOTATION = "flannel.alpha.coreos.com/public-ip-overwrite"


def node_ip_problem(address: str, local_addresses) -> str | None:
    """Why kubelet would refuse address as --node-ip, or None if it accepts it."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{address!r} is not an IP address"
    if ip.is_loopback:
        return f"{ip} is a loopback address"
    if ip.is_multicast:
        return f"{ip} is a multicast address"
    if ip.is_link_local:
        return f"{ip} is a link-local address"
    if ip.is_unspecified:
        return f"{ip} is the all-zeros address"
    if ip not in {ipaddress.ip_address(a) for a in local_addresses}:
        return f"{ip} is not an address of any local interface"
    return None


def flannel_subnet(text: str) -> str | None:
    """The pod CIDR flannel leased this node, from its subnet.env (FLANNEL_SUBNET=10.244.1.1/24
    names the bridge's address and the prefix): '10.244.1.0/24', or None if it holds none."""
    for line in text.splitlines():
        key, _, value = line.strip().partition("=")
        if key == "FLANNEL_SUBNET":
            try:
                return str(ipaddress.IPv4Interface(value.strip().strip("'\"")).network)
            except ValueError:
                return None
    return None


def _quoted(value) -> str:
    text = str(value)
    if re.search(r"['\\\n\r\x00]", text):
        raise TunneldError(f"refusing to write {text[:40]!r} into an environment file")
    return f"'{text}'"


def kube_env(name: str, address: str, interface: str, mtu: int, address6: str | None = None) -> str:
    """address6: the node's IPv6 overlay address, for a dual-stack cluster; kubelet then gets
    --node-ip=<v4>,<v6>."""
    if not valid_name(name or ""):
        raise TunneldError(f"the node name {str(name)[:64]!r} from the relay is not a Kubernetes node name; "
                           "refusing to write it into kubelet's environment")
    ipaddress.IPv4Address(address)
    if address6 is not None:
        address6 = str(ipaddress.IPv6Address(address6))
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", interface or ""):
        raise TunneldError(f"{str(interface)[:20]!r} is not an interface name")
    annotate = f"kubectl annotate node {name} {FLANNEL_ANNOTATION}={address} --overwrite"
    settings = [
        ("TUNNELD_NODE_IP", address),
        ("TUNNELD_INTERFACE", interface),
        ("TUNNELD_MTU", int(mtu)),
        "# kubelet accepts the overlay address as its node IP; the apiserver then reaches it there",
        ("KUBELET_EXTRA_ARGS", f"--node-ip={address}" + (f",{address6}" if address6 else "")),
        "# flanneld runs its VXLAN over the overlay; it sizes flannel.1 from tunneld0 by itself",
        ("FLANNELD_IFACE", interface),
        ("FLANNELD_ARGS", f"--iface={interface}"),
        ("FLANNEL_MTU", int(mtu) - VXLAN_OVERHEAD),
        "# the public IP flannel should use for this node, for clusters that set it by annotation",
        ("FLANNEL_PUBLIC_IP_OVERWRITE", address),
        ("FLANNEL_ANNOTATE_COMMAND", annotate),
    ]
    if address6:  # dual-stack: flannel's IPv6 VXLAN (70 bytes of headers) over tunneld0's IPv6 address
        settings[1:1] = [("TUNNELD_NODE_IP6", address6)]
        settings += [("FLANNEL_MTU6", int(mtu) - VXLAN_OVERHEAD6), ("FLANNEL_PUBLIC_IPV6_OVERWRITE", address6)]
    lines = [f"# tunneld: node {name}, {interface} {address}" + (f" {address6}" if address6 else "")
             + f", MTU {int(mtu)}"]
    lines += [s if isinstance(s, str) else f"{s[0]}={_quoted(s[1])}" for s in settings]
    return "\n".join(lines) + "\n"


def net_conf(mode: str, cluster_cidr: str, cluster_cidr6: str | None = None) -> str:
    """kube-flannel's net-conf.json for pods over tunneld. 'vxlan': flannel's VXLAN rides the
    overlay (flanneld --iface=tunneld0). 'routed': no VXLAN inside the tunnel; each node's
    `tunneld join --pod-cidr /run/flannel/subnet.env` advertises the pod CIDR flannel leased it,
    and flannel's extension backend (which builds no devices and no routes) only hands out
    the leases and writes subnet.env, with tunneld0's MTU for the pods."""
    try:
        network = ipaddress.IPv4Network(cluster_cidr)
    except ValueError:
        raise ConfigError(f"--cluster-cidr {cluster_cidr[:40]!r} is not an IPv4 prefix like 10.244.0.0/16") from None
    backend = {"vxlan": {"Type": "vxlan", "Port": 8472}, "routed": {"Type": "extension"}}.get(mode)
    if backend is None:
        raise ConfigError(f"--net-conf {mode[:20]!r}: use vxlan or routed")
    conf = {"Network": str(network), "EnableIPv4": True, "Backend": backend}
    if cluster_cidr6 is not None:  # dual-stack
        try:
            conf.update(EnableIPv6=True, IPv6Network=str(ipaddress.IPv6Network(cluster_cidr6)))
        except ValueError:
            raise ConfigError(f"--cluster-cidr6 {cluster_cidr6[:50]!r} is not an IPv6 prefix like "
                              "fd00:10:244::/56") from None
    return json.dumps(conf, indent=2) + "\n"
