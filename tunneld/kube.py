"""What kubelet and flannel need from tunneld on this node.

node_ip_problem() applies kubelet's own check of --node-ip (validateNodeIP in the
kubelet): not loopback, multicast, link-local or unspecified, and an address of a
local interface. kube_env() writes the settings as KEY="value" lines that both a
shell (`. file`) and a systemd EnvironmentFile= read the same way.
"""

from __future__ import annotations

import ipaddress

from .engine.mss import VXLAN_OVERHEAD

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


def kube_env(name: str, address: str, interface: str, mtu: int) -> str:
    annotate = f"kubectl annotate node {name} {FLANNEL_ANNOTATION}={address} --overwrite"
    lines = [
        f"# tunneld: node {name}, {interface} {address}, MTU {mtu}",
        f'TUNNELD_NODE_IP="{address}"',
        f'TUNNELD_INTERFACE="{interface}"',
        f'TUNNELD_MTU="{mtu}"',
        "# kubelet accepts the overlay address as its node IP; the apiserver then reaches it there",
        f'KUBELET_EXTRA_ARGS="--node-ip={address}"',
        "# flanneld runs its VXLAN over the overlay; it sizes flannel.1 from tunneld0 by itself",
        f'FLANNELD_IFACE="{interface}"',
        f'FLANNELD_ARGS="--iface={interface}"',
        f'FLANNEL_MTU="{mtu - VXLAN_OVERHEAD}"',
        "# the public IP flannel should use for this node, for clusters that set it by annotation",
        f'FLANNEL_PUBLIC_IP_OVERWRITE="{address}"',
        f'FLANNEL_ANNOTATE_COMMAND="{annotate}"',
    ]
    return "\n".join(lines) + "\n"
