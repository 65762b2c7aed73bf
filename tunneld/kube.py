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
import re

from .engine.mss import VXLAN_OVERHEAD
from .errors import TunneldError
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


def _quoted(value) -> str:
    text = str(value)
    if re.search(r"['\\\n\r\x00]", text):
        raise TunneldError(f"refusing to write {text[:40]!r} into an environment file")
    return f"'{text}'"


def kube_env(name: str, address: str, interface: str, mtu: int) -> str:
    if not valid_name(name or ""):
        raise TunneldError(f"the node name {str(name)[:64]!r} from the relay is not a Kubernetes node name; "
                           "refusing to write it into kubelet's environment")
    ipaddress.IPv4Address(address)
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", interface or ""):
        raise TunneldError(f"{str(interface)[:20]!r} is not an interface name")
    annotate = f"kubectl annotate node {name} {FLANNEL_ANNOTATION}={address} --overwrite"
    settings = [
        ("TUNNELD_NODE_IP", address),
        ("TUNNELD_INTERFACE", interface),
        ("TUNNELD_MTU", int(mtu)),
        "# kubelet accepts the overlay address as its node IP; the apiserver then reaches it there",
        ("KUBELET_EXTRA_ARGS", f"--node-ip={address}"),
        "# flanneld runs its VXLAN over the overlay; it sizes flannel.1 from tunneld0 by itself",
        ("FLANNELD_IFACE", interface),
        ("FLANNELD_ARGS", f"--iface={interface}"),
        ("FLANNEL_MTU", int(mtu) - VXLAN_OVERHEAD),
        "# the public IP flannel should use for this node, for clusters that set it by annotation",
        ("FLANNEL_PUBLIC_IP_OVERWRITE", address),
        ("FLANNEL_ANNOTATE_COMMAND", annotate),
    ]
    lines = [f"# tunneld: node {name}, {interface} {address}, MTU {int(mtu)}"]
    lines += [s if isinstance(s, str) else f"{s[0]}={_quoted(s[1])}" for s in settings]
    return "\n".join(lines) + "\n"
