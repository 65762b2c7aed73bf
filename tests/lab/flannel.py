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


def setup6(lab: Lab, ov: Overlay, names: list[str]) -> dict[str, Pod]:
    """What flanneld's vxlan backend builds for IPv6 in a dual-stack cluster:

      flannel-v6.1  VXLAN, VNI 1, local = the node's IPv6 overlay address, dev tunneld0,
                    dstport 8472, nolearning, MTU = tunneld0's MTU - 70; the subnet's ::/128
      for every other node: neighbour, FDB entry (-> its IPv6 overlay address) and onlink
                    route to its pod subnet, as for IPv4
      cni6          a bridge holding the subnet's ::1, and one pod namespace behind a veth at ::2
    Pod subnets are 2001:db8:44:N::/64 (documentation range), N from 1 in node order."""
    pods = {}
    for n, name in enumerate(names, start=1):
        st = ov.node_status(name)
        ns = ov.nodes[name].ns
        mtu = st["mtu"] - 70
        subnet = f"2001:db8:44:{n}::"
        lab.run("ip", "-n", ns, "link", "add", "flannel-v6.1", "type", "vxlan", "id", "1", "local", st["address6"],
                "dev", "tunneld0", "dstport", "8472", "nolearning")
        lab.run("ip", "-n", ns, "link", "set", "flannel-v6.1", "mtu", str(mtu), "up")
        lab.run("ip", "-n", ns, "addr", "add", f"{subnet}/128", "dev", "flannel-v6.1", "nodad")
        mac = json.loads(lab.run("ip", "-n", ns, "-j", "link", "show", "flannel-v6.1").stdout)[0]["address"]
        lab.run("ip", "-n", ns, "link", "add", "cni6", "type", "bridge")
        lab.run("ip", "-n", ns, "addr", "add", f"{subnet}1/64", "dev", "cni6", "nodad")
        lab.run("ip", "-n", ns, "link", "set", "cni6", "mtu", str(mtu), "up")
        lab.sysctl(ns, "net.ipv6.conf.all.forwarding", "1")
        pod_ns = lab.add_namespace(f"{name}-pod6")
        lab.veth(ns, f"vethsix{n}", pod_ns, "eth0", mtu)
        lab.run("ip", "-n", ns, "link", "set", f"vethsix{n}", "master", "cni6")
        lab.run("ip", "-n", pod_ns, "addr", "add", f"{subnet}2/64", "dev", "eth0", "nodad")
        lab.run("ip", "-n", pod_ns, "-6", "route", "add", "default", "via", f"{subnet}1")
        pods[name] = Pod(name, ns, pod_ns, f"{subnet}2", f"{subnet}/64", mtu, mac, st["address6"])
    for a in pods.values():
        for b in pods.values():
            if a is b:
                continue
            vtep = b.subnet.removesuffix("/64")
            lab.run("ip", "-n", a.node_ns, "neigh", "add", vtep, "lladdr", b.vtep_mac, "dev", "flannel-v6.1",
                    "nud", "permanent")
            lab.run("bridge", "-n", a.node_ns, "fdb", "replace", b.vtep_mac, "dev", "flannel-v6.1", "dst",
                    b.overlay_ip, "self", "permanent")
            lab.run("ip", "-n", a.node_ns, "-6", "route", "add", b.subnet, "via", vtep, "dev", "flannel-v6.1", "onlink")
    return pods


def teardown6(lab: Lab, ov: Overlay, names: list[str]) -> None:
    """Undo setup6, or what of it was done, on nodes that stay (a shared topology)."""
    for name in names:
        for dev in ("flannel-v6.1", "cni6"):
            lab.nsexec(ov.nodes[name].ns, "ip", "link", "del", dev, check=False)
        pod_ns = f"{lab.tag}-{name}-pod6"
        if pod_ns in lab.namespaces:
            lab.run("ip", "netns", "del", pod_ns, check=False)
            lab.namespaces.remove(pod_ns)
