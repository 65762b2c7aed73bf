"""A cluster's data plane over tunneld, with the kernel's own objects: flannel's VXLAN over
tunneld0, pods behind cni0, one node on a 1450-byte LAN (the seeds' MTU trap), kubelet's
node-ip check, the apiserver's calls to kubelet, restarts, and a gateway into the pod network."""

import json
import shlex
import sys
import time

import pytest

from tunneld.kube import node_ip_problem
from tests.lab import Lab, wait_for
from tests.lab import flannel
from tests.lab.overlay import Overlay, transfer_between

NODES = ("control-plane", "worker", "edge")


@pytest.fixture(scope="module")
def cluster():
    lab = Lab()
    try:
        ov = Overlay(lab)
        ov.start_relay()
        hosts = {"control-plane": lab.public_host("control-plane"), "worker": lab.nat_host("worker", "cone"),
                 "edge": lab.nat_host("edge", "no-inbound", lan_mtu=1450)}
        token = ov.token()
        for name, host in hosts.items():
            # The control plane is also the gateway into the pod network for machines outside it.
            extra = ("--advertise-routes", "198.18.0.0/16") if name == "control-plane" else ()
            ov.join(host, name, token, *extra)
        # A machine outside the cluster (seed 002's physical servers) that takes the gateway's routes.
        ov.join(lab.public_host("outside"), "outside", token, "--accept-routes")
        ov.wait_connected()
        ov.approve("control-plane", "198.18.0.0/16").check_returncode()
        wait_for(lambda: all(ov.node_status(n)["mtu"] == 1382 for n in ov.nodes), 20,
                 what="every node to take the overlay MTU")
        ov.pods = flannel.setup(lab, ov, list(NODES))
        yield ov
    finally:
        lab.close()


def pod_ping(ov, src, dst, size=None, count=2):
    cmd = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2"]
    if size is not None:
        cmd += ["-M", "do", "-s", str(size)]
    return ov.lab.nsexec(ov.pods[src].ns, *cmd, ov.pods[dst].ip, check=False, timeout=30)


def ip_json(ov, ns, *args):
    return json.loads(ov.lab.nsexec(ns, "ip", "-j", *args).stdout or "[]")


def test_every_node_takes_the_smallest_path_as_its_mtu(cluster):
    for name in NODES:
        st = cluster.node_status(name)
        assert st["mtu"] == st["network_mtu"] == 1450 - 68
        (link,) = ip_json(cluster, cluster.nodes[name].ns, "link", "show", "tunneld0")
        assert link["mtu"] == 1382
        paths = {p["name"]: p["mtu"] for p in st["peers"]}
        if name != "edge":
            assert paths["edge"] == 1382
    relay = cluster.status(cluster.relay)
    assert relay["mtu"] == 1382 and {n["name"]: n["mtu"] for n in relay["nodes"]}["edge"] == 1450


def test_flannel_vxlan_device_is_what_flannel_builds(cluster):
    for name in NODES:
        (dev,) = ip_json(cluster, cluster.nodes[name].ns, "-d", "link", "show", "flannel.1")
        info = dev["linkinfo"]["info_data"]
        assert (info["id"], info["port"], info["learning"]) == (1, 8472, False)
        assert info["local"] == cluster.node_status(name)["address"] and info["link"] == "tunneld0"
        assert dev["mtu"] == 1382 - 50


def test_every_pod_reaches_every_pod(cluster):
    for src in NODES:
        for dst in NODES:
            if src != dst:
                r = pod_ping(cluster, src, dst)
                assert r.returncode == 0, f"pod on {src} -> pod on {dst}: {r.stdout.decode()}"


def test_full_size_dont_fragment_pod_pings_cross_the_1450_link_both_ways(cluster):
    size = cluster.pods["edge"].mtu - 28
    assert all(p.mtu == 1332 for p in cluster.pods.values())  # one MTU for every pod
    for other in ("control-plane", "worker"):
        for src, dst in ((other, "edge"), ("edge", other)):
            r = pod_ping(cluster, src, dst, size=size)
            assert r.returncode == 0, f"{src} -> {dst} at {size}: {r.stdout.decode()}{r.stderr.decode()}"
            assert pod_ping(cluster, src, dst, size=size + 1, count=1).returncode != 0


def test_30_megabytes_pod_to_pod_both_ways_across_the_1450_link(cluster):
    edge, cp = cluster.pods["edge"], cluster.pods["control-plane"]
    for src, dst, port in ((cp, edge, 8080), (edge, cp, 8081)):
        sent, received = transfer_between(cluster.lab, src.ns, dst.ns, dst.ip, port, 30_000_000, timeout=180)
        assert sent == received and sent.startswith("30000000 "), (src.node, dst.node)


def test_kubelet_accepts_the_overlay_address_and_the_apiserver_reaches_it(cluster):
    lab = cluster.lab
    edge = cluster.nodes["edge"]
    out = lab.nsexec(edge.ns, sys.executable, "-m", "tunneld", "kube-env", "--state-dir", edge.state_dir)
    env = dict(line.split("=", 1) for line in out.stdout.decode().splitlines() if line and not line.startswith("#"))
    address, address6 = cluster.node_status("edge")["address"], cluster.node_status("edge")["address6"]
    assert shlex.split(env["KUBELET_EXTRA_ARGS"]) == [f"--node-ip={address},{address6}"]  # dual-stack
    local = [a["local"] for link in ip_json(cluster, edge.ns, "addr") for a in link["addr_info"]]
    assert node_ip_problem(address, local) is None and node_ip_problem(address6, local) is None
    assert node_ip_problem(cluster.relay.address, local) is not None  # the check does refuse
    # The apiserver on the control-plane node calls kubelet on edge, which accepts no inbound.
    sent, received = transfer_between(lab, cluster.nodes["control-plane"].ns, edge.ns, address, 10250, 2_000_000)
    assert sent == received
    (route,) = ip_json(cluster, edge.ns, "route", "get", cluster.relay.address)
    assert route["dev"] == "eth0"


def test_kube_env_reads_in_a_shell(cluster):
    node = cluster.nodes["worker"]
    script = (f"set -e; eval \"$({sys.executable} -m tunneld kube-env --state-dir {node.state_dir})\"; "
              'echo "$KUBELET_EXTRA_ARGS|$FLANNELD_ARGS|$FLANNEL_MTU|$FLANNEL_ANNOTATE_COMMAND"')
    out = cluster.lab.nsexec(node.ns, "bash", "-c", script).stdout.decode().strip()
    address, address6 = cluster.node_status("worker")["address"], cluster.node_status("worker")["address6"]
    assert out == (f"--node-ip={address},{address6}|--iface=tunneld0|1332|kubectl annotate node worker "
                   f"flannel.alpha.coreos.com/public-ip-overwrite={address} --overwrite")


def test_an_outside_machine_reaches_every_pod_through_the_gateway(cluster):
    lab = cluster.lab
    outside = cluster.nodes["outside"]
    routes = ip_json(cluster, outside.ns, "route", "show", "dev", "tunneld0")
    assert any(r["dst"] == "198.18.0.0/16" and r.get("protocol") == "199" for r in routes), routes
    assert cluster.node_status("outside")["accepted_routes"] == ["198.18.0.0/16"]
    (to_relay,) = ip_json(cluster, outside.ns, "route", "get", cluster.relay.address)
    assert to_relay["dev"] == "eth0"
    for name, pod in cluster.pods.items():
        r = lab.nsexec(outside.ns, "ping", "-n", "-q", "-c", "2", "-W", "2", pod.ip, check=False, timeout=20)
        assert r.returncode == 0, f"outside -> pod on {name}: {r.stdout.decode()}"
    edge_pod = cluster.pods["edge"]
    sent, received = transfer_between(lab, outside.ns, edge_pod.ns, edge_pod.ip, 8082, 4_000_000)
    assert sent == received
    # What the operator sees and may not do, on the running relay.
    rows = json.loads(lab.nsexec(cluster.relay.ns, sys.executable, "-m", "tunneld", "routes", "list", "--json",
                                 "--state-dir", cluster.relay.state_dir).stdout)
    (cp,) = [r for r in rows if r["name"] == "control-plane"]
    assert cp["advertised"] == cp["approved"] == cp["effective"] == ["198.18.0.0/16"]
    clash = cluster.approve("worker", "198.18.5.0/24")
    err = clash.stderr.decode().strip().splitlines()
    assert clash.returncode == 2 and len(err) == 1 and "approved for control-plane" in err[0], err
    # Nodes that do not accept routes are untouched by them: their tunneld0 routes only the peers.
    peers = {p["address"] for p in cluster.node_status("worker")["peers"]}
    assert {r["dst"] for r in ip_json(cluster, cluster.nodes["worker"].ns, "route", "show", "dev", "tunneld0")
            if r.get("protocol") == "199"} == peers


def test_restarting_tunneld_keeps_flannel_and_pod_traffic_resumes(cluster):
    ns = cluster.nodes["edge"].ns
    (before,) = ip_json(cluster, ns, "-d", "link", "show", "flannel.1")
    assert cluster.stop_node("edge") == 0
    time.sleep(1)
    cluster.join(cluster.nodes["edge"], "edge")
    cluster.wait_connected()
    (after,) = ip_json(cluster, ns, "-d", "link", "show", "flannel.1")
    assert after["ifindex"] == before["ifindex"] and after["linkinfo"]["info_data"]["link"] == "tunneld0"
    wait_for(lambda: pod_ping(cluster, "control-plane", "edge", count=1).returncode == 0, 20,
             what="pod traffic to resume")
    assert pod_ping(cluster, "edge", "worker").returncode == 0


def test_tcp_through_a_pmtu_blackhole_is_saved_by_mss_clamping(lab):
    """Hosts on 1500-byte LANs behind two gateways talk through the overlay (MTU 1432), and the
    gateways drop ICMP 'fragmentation needed' (as many firewalls do). Full-size packets vanish;
    TCP still completes both ways because tunneld clamps the MSS of the SYNs it carries."""
    ov = Overlay(lab)
    ov.start_relay()
    token = ov.token()
    sides = {}
    for n, name in ((50, "site-a"), (60, "site-b")):
        gw = lab.public_host(name)
        host = lab.add_namespace(f"{name}-host")
        lab.veth(gw.ns, "lan", host, "eth0")
        lab.addr(gw.ns, "lan", f"198.19.{n}.1/24")
        lab.addr(host, "eth0", f"198.19.{n}.2/24")
        lab.run("ip", "-n", host, "route", "add", "default", "via", f"198.19.{n}.1")
        for chain in ("OUTPUT", "FORWARD"):
            lab.nsexec(gw.ns, "iptables", "-w", "5", "-A", chain, "-p", "icmp", "--icmp-type",
                       "fragmentation-needed", "-j", "DROP")
        ov.join(gw, name, token, "--advertise-routes", f"198.19.{n}.0/24", "--accept-routes", "--no-snat-routes")
        sides[name] = (host, f"198.19.{n}.2")
    ov.wait_connected()
    for n, name in ((50, "site-a"), (60, "site-b")):
        ov.approve(name, f"198.19.{n}.0/24").check_returncode()
    wait_for(lambda: all(ov.node_status(n)["accepted_routes"] for n in sides), 15, what="routes to be accepted")
    (a_host, a_ip), (b_host, b_ip) = sides["site-a"], sides["site-b"]
    assert lab.nsexec(a_host, "ping", "-c", "2", "-W", "2", b_ip, check=False).returncode == 0
    blackhole = lab.nsexec(a_host, "ping", "-c", "2", "-W", "2", "-M", "do", "-s", "1472", b_ip, check=False)
    assert blackhole.returncode != 0  # the path really swallows full-size packets
    for src, dst, ip, port in ((a_host, b_host, b_ip, 9001), (b_host, a_host, a_ip, 9002)):
        sent, received = transfer_between(lab, src, dst, ip, port, 4_000_000, timeout=60)
        assert sent == received
