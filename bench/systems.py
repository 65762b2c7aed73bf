"""The systems the bench compares, each set up in the lab as a pair of namespaces.

Every setup returns a Pair: where the client runs, where the server runs, the server's
address over the system, the interface traffic leaves by (for the pod-over-VXLAN cell),
and the PIDs of the processes doing the tunnelling (for their CPU).

  wireguard-go   Debian's userspace WireGuard, two public hosts, direct
  nebula         Debian's nebula: a lighthouse that is also a relay, two public hosts;
                 direct, or relayed (their direct UDP to each other dropped)
  tunneld        public <-> public (direct), cone NAT <-> no-inbound NAT (relayed); pods
                 over VXLAN on tunneld0, and routed (each node's pod CIDR, no VXLAN)
  tunneld mesh   two no-inbound NATs homed on two relays of one network (etcd): relay to
                 relay, one hop
  tunneld6       a relay on IPv4 and IPv6: two IPv6-only hosts direct over IPv6, and two
                 IPv4-only hosts direct over IPv4 beside them (the same overlay MTU)
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from tests.lab import Lab, LabError, wait_for
from tests.lab.overlay import Overlay

WG_NET = "100.127.0."  # overlay ranges of the peers; tunneld's own is 100.64.0.0/10
NEBULA_NET = "100.126.0."
PEER_MTU = 1420  # wireguard-go's default; nebula gets the same, so the MTU does not decide


@dataclass
class Pair:
    client_ns: str
    server_ns: str
    server_addr: str
    client_addr: str
    dev: str  # the client's; the server's is server_dev when it differs
    pids: list[int] = field(default_factory=list)
    server_dev: str = ""
    cleanup: list = field(default_factory=list)


def _ping_ok(lab: Lab, ns: str, addr: str) -> bool:
    return lab.nsexec(ns, "ping", "-n", "-q", "-c", "1", "-W", "1", addr, check=False).returncode == 0


def wireguard_go(lab: Lab) -> Pair:
    a, b = lab.public_host("wg-a"), lab.public_host("wg-b")
    keys = {}
    for h in (a, b):
        priv = lab.run("wg", "genkey").stdout.strip()
        pub = lab.run("wg", "pubkey", input=priv).stdout.strip()
        path = os.path.join(lab.tmp, f"{h.ns}.key")
        with open(path, "wb") as f:
            f.write(priv)
        keys[h.ns] = (path, pub.decode())
    pids = []
    env = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}
    # Distinct names: wireguard-go's control socket (/run/wireguard/NAME.sock) is not per namespace.
    devs = [f"wg{lab.tag[-10:]}{i}"[-15:] for i in (1, 2)]
    for i, (h, other) in enumerate(((a, b), (b, a)), start=1):
        dev = devs[i - 1]
        proc = lab.spawn(h.ns, "wireguard-go", "-f", dev, env=env, log=os.path.join(lab.tmp, f"{h.ns}-wg.log"))
        pids.append(proc.pid)
        wait_for(lambda: lab.nsexec(h.ns, "wg", "show", dev, check=False).returncode == 0, 10,
                 what=f"wireguard-go's {dev}")
        lab.nsexec(h.ns, "wg", "set", dev, "private-key", keys[h.ns][0], "listen-port", "51820",
                   "peer", keys[other.ns][1], "endpoint", f"{other.address}:51820",
                   "allowed-ips", f"{WG_NET}{3 - i}/32")
        lab.nsexec(h.ns, "ip", "addr", "add", f"{WG_NET}{i}/24", "dev", dev)
        lab.nsexec(h.ns, "ip", "link", "set", dev, "mtu", str(PEER_MTU), "up")
    wait_for(lambda: _ping_ok(lab, a.ns, f"{WG_NET}2"), 20, what="wireguard-go to pass traffic")
    return Pair(a.ns, b.ns, f"{WG_NET}2", f"{WG_NET}1", devs[0], pids, server_dev=devs[1])


def _nebula_config(lab: Lab, name: str, ip: str, lighthouse: tuple[str, str] | None, ca: str) -> str:
    d = lab.tmp
    lab.run("nebula-cert", "sign", "-ca-crt", ca, "-ca-key", os.path.join(d, "ca.key"), "-name", name,
            "-ip", f"{ip}/24", "-out-crt", os.path.join(d, f"{name}.crt"), "-out-key", os.path.join(d, f"{name}.key"))
    if lighthouse is None:
        lh = "  am_lighthouse: true\n"
        relay = "  am_relay: true\n"
        hostmap = "{}"
    else:
        lh = f"  am_lighthouse: false\n  interval: 60\n  hosts: ['{lighthouse[0]}']\n"
        relay = f"  am_relay: false\n  use_relays: true\n  relays: ['{lighthouse[0]}']\n"
        hostmap = f"{{'{lighthouse[0]}': ['{lighthouse[1]}:4242']}}"
    config = f"""pki:
  ca: {ca}
  cert: {d}/{name}.crt
  key: {d}/{name}.key
static_host_map: {hostmap}
lighthouse:
{lh}listen:
  host: 0.0.0.0
  port: 4242
punchy:
  punch: true
relay:
{relay}tun:
  dev: neb1
  mtu: {PEER_MTU}
logging:
  level: warning
firewall:
  outbound: [{{port: any, proto: any, host: any}}]
  inbound: [{{port: any, proto: any, host: any}}]
"""
    path = os.path.join(d, f"{name}.yml")
    with open(path, "w") as f:
        f.write(config)
    return path


def nebula(lab: Lab) -> tuple[Pair, Pair]:
    """Two pairs sharing one lighthouse/relay: (direct, relayed)."""
    d = lab.tmp
    ca = os.path.join(d, "ca.crt")
    lab.run("nebula-cert", "ca", "-name", "bench", "-out-crt", ca, "-out-key", os.path.join(d, "ca.key"))
    lh = lab.public_host("neb-lh")
    hosts = {"neb-lh": (lh, f"{NEBULA_NET}1")}
    for i, name in enumerate(("neb-a", "neb-b", "neb-c", "neb-d"), start=2):
        hosts[name] = (lab.public_host(name), f"{NEBULA_NET}{i}")
    # neb-c and neb-d may not reach each other directly: only the relay joins them.
    c, d_ = hosts["neb-c"][0], hosts["neb-d"][0]
    lab.nsexec(c.ns, "iptables", "-w", "5", "-I", "OUTPUT", "-d", d_.address, "-j", "DROP")
    lab.nsexec(c.ns, "iptables", "-w", "5", "-I", "INPUT", "-s", d_.address, "-j", "DROP")
    pids = {}
    for name, (h, ip) in hosts.items():
        cfg = _nebula_config(lab, name, ip, None if name == "neb-lh" else (f"{NEBULA_NET}1", lh.address), ca)
        proc = lab.spawn(h.ns, "nebula", "-config", cfg, log=os.path.join(d, f"{name}-nebula.log"))
        pids[name] = proc.pid
    for a, b in (("neb-a", "neb-b"), ("neb-c", "neb-d")):
        wait_for(lambda: _ping_ok(lab, hosts[a][0].ns, hosts[b][1]), 60, interval=1, what=f"nebula {a} -> {b}")
    direct = Pair(hosts["neb-a"][0].ns, hosts["neb-b"][0].ns, hosts["neb-b"][1], hosts["neb-a"][1], "neb1",
                  [pids["neb-a"], pids["neb-b"]])
    relayed = Pair(c.ns, d_.ns, hosts["neb-d"][1], hosts["neb-c"][1], "neb1",
                   [pids["neb-c"], pids["neb-d"], pids["neb-lh"]])
    return direct, relayed


def peer_path(ov: Overlay, src: str, dst: str) -> str:
    return next(p["path"] for p in ov.node_status(src)["peers"] if p["name"] == dst)


POD_CIDRS = {"pub-a": 1, "pub-b": 2, "sender": 3, "receiver": 4}  # routed mode: 198.18.N.0/24 each


# Scrapes a daemon's /metrics every second, as a busy Prometheus would (the default is 15 s),
# for as long as the bench runs; the count of good scrapes goes to a file.
SCRAPE = r"""
import sys, time, urllib.request
good = 0
for _ in range(4 * 3600):
    try:
        good += urllib.request.urlopen(sys.argv[1], timeout=2).status == 200
        with open(sys.argv[2], "w") as f:
            f.write(str(good))
    except OSError:
        pass
    time.sleep(1)
"""


def tunneld(lab: Lab, python: str | None = None, extra: tuple = ()) -> tuple[Overlay, Pair, Pair]:
    """python: another release's (tests/lab/release.py), for --compare. This tree's nodes also
    carry a pod CIDR each (join --pod-cidr, routed mode: routed() puts a pod behind it), and
    its nodes and relay serve metrics, scraped every second (ov.scrapes: the count files).
    extra: more arguments for every join (--workers 1)."""
    ov = Overlay(lab, relay_python=python)
    relay_metrics = () if python else ("--metrics", f"{ov.relay.address}:9101")
    ov.start_relay(*(() if python else ("--auto-approve-routes", "198.18.0.0/16", *relay_metrics)))
    hosts = {"pub-a": lab.public_host("pub-a"), "pub-b": lab.public_host("pub-b"),
             "sender": lab.nat_host("sender", "cone"), "receiver": lab.nat_host("receiver", "no-inbound")}
    token = ov.token()
    ov.scrapes = []
    for name, host in hosts.items():
        pods = () if python else ("--pod-cidr", f"198.18.{POD_CIDRS[name]}.0/24", "--metrics",
                                  f"{host.address}:9100")
        ov.join(host, name, token, *pods, *extra, python=python)
    ov.wait_connected()
    if python is None:
        for ns, url in [(h.ns, f"http://{h.address}:9100/metrics") for h in hosts.values()] + [
                (ov.relay.ns, f"http://{ov.relay.address}:9101/metrics")]:
            count = os.path.join(lab.tmp, f"scrapes-{ns}")
            lab.spawn(ns, sys.executable, "-c", SCRAPE, url, count)
            ov.scrapes.append(count)
    pairs = []
    for src, dst, path in (("pub-a", "pub-b", "direct"), ("sender", "receiver", "relay")):
        ov.ping(src, ov.address(dst), count=2)  # a session first, so that no handshake is timed
        wait_for(lambda: peer_path(ov, src, dst) == path, 30, what=f"{src} -> {dst} to be {path}")
        pids = [ov.node_procs[src].pid, ov.node_procs[dst].pid]
        if path == "relay":
            pids.append(ov.relay_proc.pid)
        pair = Pair(hosts[src].ns, hosts[dst].ns, ov.address(dst), ov.address(src), "tunneld0", pids)
        pair.cleanup.append(lambda s=src, d=dst, p=path: _check_path(ov, s, d, p))
        pairs.append(pair)
    return ov, pairs[0], pairs[1]


def tunneld6(lab: Lab) -> tuple[Pair, Pair]:
    """Direct pairs on a relay that listens on IPv4 and IPv6 (so the overlay MTU counts IPv6's
    header for both): two hosts with IPv6 alone, going direct over IPv6, and two with IPv4
    alone beside them, going direct over IPv4."""
    ov = Overlay(lab, relay_ipv6=True)
    ov.start_relay()
    token = ov.token()
    hosts = {"six-a": lab.public_host("six-a", ipv4=False), "six-b": lab.public_host("six-b", ipv4=False),
             "four-a": lab.public_host("four-a"), "four-b": lab.public_host("four-b")}
    for name, host in hosts.items():
        ov.join(host, name, token, relay=ov.relay_endpoint6 if name.startswith("six") else None)
    ov.wait_connected()
    pairs = []
    for src, dst in (("six-a", "six-b"), ("four-a", "four-b")):
        ov.ping(src, ov.address(dst), count=2)
        wait_for(lambda: peer_path(ov, src, dst) == "direct", 30, what=f"{src} -> {dst} to be direct")
        pair = Pair(hosts[src].ns, hosts[dst].ns, ov.address(dst), ov.address(src), "tunneld0",
                    [ov.node_procs[src].pid, ov.node_procs[dst].pid])
        pair.cleanup.append(lambda s=src, d=dst: _check_path(ov, s, d, "direct"))
        pairs.append(pair)
    return pairs[0], pairs[1]


def _check_path(ov: Overlay, src: str, dst: str, path: str) -> None:
    if peer_path(ov, src, dst) != path:
        raise LabError(f"{src} -> {dst} left the {path} path during the measurement")


def vxlan(lab: Lab, pair: Pair) -> Pair:
    """flannel's data path over a pair: a VXLAN device (VNI 1, port 8472) on each side,
    over the system's interface, with pod addresses in 198.18.250.0/24."""
    ends = ((pair.client_ns, pair.client_addr, pair.server_addr, 1, pair.dev),
            (pair.server_ns, pair.server_addr, pair.client_addr, 2, pair.server_dev or pair.dev))
    for ns, local, remote, i, dev in ends:
        out = lab.nsexec(ns, "cat", f"/sys/class/net/{dev}/mtu").stdout
        lab.nsexec(ns, "ip", "link", "add", "vxb0", "type", "vxlan", "id", "1", "local", local, "remote", remote,
                   "dstport", "8472", "dev", dev)
        lab.nsexec(ns, "ip", "link", "set", "vxb0", "mtu", str(int(out) - 50), "up")
        lab.nsexec(ns, "ip", "addr", "add", f"198.18.250.{i}/24", "dev", "vxb0")
    pods = Pair(pair.client_ns, pair.server_ns, "198.18.250.2", "198.18.250.1", "vxb0", pair.pids)
    pods.cleanup.append(lambda: [lab.nsexec(ns, "ip", "link", "del", "vxb0", check=False) for ns, *_ in ends])
    wait_for(lambda: _ping_ok(lab, pair.client_ns, "198.18.250.2"), 20, what="VXLAN over " + pair.dev)
    return pods


def routed(lab: Lab, ov: Overlay, pair: Pair, src: str, dst: str) -> Pair:
    """Routed pod mode over a tunneld pair: a pod namespace behind each node at tunneld0's
    MTU, in the node's pod CIDR, reached through the routes the nodes advertise (no VXLAN)."""
    ends = []
    for name, ns in ((src, pair.client_ns), (dst, pair.server_ns)):
        n = POD_CIDRS[name]
        mtu = int(lab.nsexec(ns, "cat", "/sys/class/net/tunneld0/mtu").stdout)
        pod = lab.add_namespace(f"{name}-pod")
        lab.veth(ns, "podr0", pod, "eth0", mtu)
        lab.addr(ns, "podr0", f"198.18.{n}.1/24")
        lab.addr(pod, "eth0", f"198.18.{n}.2/24")
        lab.nsexec(pod, "ip", "route", "add", "default", "via", f"198.18.{n}.1")
        ends.append((pod, f"198.18.{n}.2"))
    wait_for(lambda: all(f"198.18.{POD_CIDRS[o]}.0/24" in ov.node_status(me)["accepted_routes"]
                         for me, o in ((src, dst), (dst, src))), 20, what="the pod CIDRs to be routed")
    pods = Pair(ends[0][0], ends[1][0], ends[1][1], ends[0][1], "eth0", pair.pids)
    wait_for(lambda: _ping_ok(lab, pods.client_ns, pods.server_addr), 20, what="routed pods over tunneld0")
    return pods


def raw_veth(lab: Lab) -> Pair:
    a, b = lab.add_namespace("veth-a"), lab.add_namespace("veth-b")
    lab.veth(a, "eth0", b, "eth0")
    lab.addr(a, "eth0", "198.19.200.1/24")
    lab.addr(b, "eth0", "198.19.200.2/24")
    return Pair(a, b, "198.19.200.2", "198.19.200.1", "eth0")


def underlay(lab: Lab) -> tuple[Pair, Pair]:
    """Public to public across the "internet" bridge, and from behind a cone NAT to public."""
    a, b = lab.public_host("ul-a"), lab.public_host("ul-b")
    n = lab.nat_host("ul-nat", "cone")
    return Pair(a.ns, b.ns, b.address, a.address, "eth0"), Pair(n.ns, b.ns, b.address, n.address, "eth0")


def tunneld_mesh(lab: Lab) -> Pair:
    """Relayed across two relays sharing a three-member etcd: the sender is homed on relay 1,
    the receiver on relay 2, so every datagram takes the mesh hop between them."""
    from tests.lab.relays import Etcd, Relays
    etcd = Etcd(lab)
    etcd.start_all()
    r = Relays(lab, etcd, count=2)
    r.start(0)
    r.start(1)
    token = r.token(0, "--uses", "0")
    hosts = {"sender": lab.nat_host("sender", "no-inbound"), "receiver": lab.nat_host("receiver", "no-inbound")}
    r.join(hosts["sender"], "sender", token, [0, 1])
    r.join(hosts["receiver"], "receiver", token, [1, 0])
    r.wait_connected(["sender", "receiver"])
    dst = r.node_status("receiver")["address"]
    r.ping("sender", dst, count=2)
    if r.home("sender") == r.home("receiver"):
        raise LabError("sender and receiver are homed on one relay: no mesh hop to measure")
    pids = [r.node_procs["sender"].pid, r.node_procs["receiver"].pid, r.procs[0].pid, r.procs[1].pid]
    pair = Pair(hosts["sender"].ns, hosts["receiver"].ns, dst, r.node_status("sender")["address"], "tunneld0", pids)

    homes = {n: r.home(n) for n in ("sender", "receiver")}

    def check():
        if r.home("sender") == r.home("receiver"):
            moved = [f"{n} ({r.node_status(n)['counters'].get('relay_failovers', 0)} failovers)"
                     for n in homes if r.home(n) != homes[n]]
            raise LabError(f"a node changed relays during the measurement: {', '.join(moved)}")
    pair.cleanup.append(check)
    return pair
