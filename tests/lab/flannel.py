"""What flanneld's vxlan backend builds on each node when started with --iface=tunneld0.

  flannel.1   VXLAN, VNI 1, local = the node's overlay address, dev tunneld0,
              dstport 8472, nolearning, MTU = tunneld0's MTU - 50; the node's pod
              subnet's .0/32 on it
  for every other node: a permanent neighbour (its .0 -> its flannel.1 MAC), a
              static FDB entry (its MAC -> its overlay address), and an onlink
              route to its pod subnet via its .0
  cni0        a bridge holding the subnet's .1, and one pod namespace behind a veth
              at .2, default route via .1
Pod subnets are 198.18.N.0/24 (the lab's pod range), N from 1 in node order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from . import Lab
from .overlay import Overlay


@dataclass
class Pod:
    node: str
    node_ns: str
    ns: str  # the pod's own namespace
    ip: str
    subnet: str
    mtu: int
    vtep_mac: str
    overlay_ip: str


def setup(lab: Lab, ov: Overlay, names: list[str]) -> dict[str, Pod]:
    pods = {}
    for n, name in enumerate(names, start=1):
        st = ov.node_status(name)
        ns = ov.nodes[name].ns
        mtu = st["mtu"] - 50
        lab.run("ip", "-n", ns, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", st["address"],
                "dev", "tunneld0", "dstport", "8472", "nolearning")
        lab.run("ip", "-n", ns, "link", "set", "flannel.1", "mtu", str(mtu), "up")
        lab.addr(ns, "flannel.1", f"198.18.{n}.0/32")
        mac = json.loads(lab.run("ip", "-n", ns, "-j", "link", "show", "flannel.1").stdout)[0]["address"]
        lab.run("ip", "-n", ns, "link", "add", "cni0", "type", "bridge")
        lab.addr(ns, "cni0", f"198.18.{n}.1/24")
        lab.run("ip", "-n", ns, "link", "set", "cni0", "mtu", str(mtu), "up")
        lab.sysctl(ns, "net.ipv4.ip_forward", "1")
        pod_ns = lab.add_namespace(f"{name}-pod")
        lab.veth(ns, f"veth{n}", pod_ns, "eth0", mtu)
        lab.run("ip", "-n", ns, "link", "set", f"veth{n}", "master", "cni0")
        lab.addr(pod_ns, "eth0", f"198.18.{n}.2/24")
        lab.run("ip", "-n", pod_ns, "route", "add", "default", "via", f"198.18.{n}.1")
        pods[name] = Pod(name, ns, pod_ns, f"198.18.{n}.2", f"198.18.{n}.0/24", mtu, mac, st["address"])
    for a in pods.values():
        for b in pods.values():
            if a is b:
                continue
            vtep = b.subnet.replace(".0/24", ".0")
            lab.run("ip", "-n", a.node_ns, "neigh", "add", vtep, "lladdr", b.vtep_mac, "dev", "flannel.1",
                    "nud", "permanent")
            lab.run("bridge", "-n", a.node_ns, "fdb", "replace", b.vtep_mac, "dev", "flannel.1", "dst", b.overlay_ip,
                    "self", "permanent")
            lab.run("ip", "-n", a.node_ns, "route", "add", b.subnet, "via", vtep, "dev", "flannel.1", "onlink")
    return pods
