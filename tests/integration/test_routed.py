"""Routed pod mode: no VXLAN inside the tunnel. Each node carries its pod CIDR itself
(`join --pod-cidr`), as flannel's extension backend expects: no flannel.1 anywhere, pods
at tunneld0's full MTU, and the inner-source check holding pod addresses to their node."""

import json
import os
import subprocess
import sys

import pytest

from tests.lab import Lab, wait_for
from tests.lab.overlay import Overlay, transfer_between

WHO = ("import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(10); "
       "s.bind(('0.0.0.0', int(sys.argv[1]))); print('listening', flush=True); print(s.recvfrom(64)[1][0])")
PODS = {"r1": 1, "r2": 2, "r3": 3}  # node -> N of its pod CIDR 198.18.N.0/24


@pytest.fixture(scope="module")
def routed():
    lab = Lab()
    try:
        ov = Overlay(lab)
        ov.start_relay("--auto-approve-routes", "198.18.0.0/16")
        hosts = {"r1": lab.public_host("r1"), "r2": lab.nat_host("r2", "cone"),
                 "r3": lab.nat_host("r3", "no-inbound")}
        token = ov.token()
        # r2 follows flannel's subnet.env, which flannel writes only once tunneld0 is up.
        subnet_env = os.path.join(lab.tmp, "r2-subnet.env")
        ov.join(hosts["r1"], "r1", token, "--pod-cidr", "198.18.1.0/24")
        ov.join(hosts["r2"], "r2", token, "--pod-cidr", subnet_env)
        ov.join(hosts["r3"], "r3", token, "--pod-cidr", "198.18.3.0/24")
        ov.wait_connected()
        mtu = ov.node_status("r1")["mtu"]
        with open(subnet_env + ".tmp", "w") as f:
            f.write(f"FLANNEL_NETWORK=198.18.0.0/16\nFLANNEL_SUBNET=198.18.2.1/24\nFLANNEL_MTU={mtu}\n"
                    "FLANNEL_IPMASQ=true\n")
        os.rename(subnet_env + ".tmp", subnet_env)
        ov.pods = {}
        for name, n in PODS.items():
            ns = ov.nodes[name].ns
            lab.run("ip", "-n", ns, "link", "add", "cni0", "type", "bridge")
            lab.addr(ns, "cni0", f"198.18.{n}.1/24")
            lab.run("ip", "-n", ns, "link", "set", "cni0", "mtu", str(mtu), "up")
            pod = lab.add_namespace(f"{name}-pod")
            lab.veth(ns, f"veth{n}", pod, "eth0", mtu)
            lab.run("ip", "-n", ns, "link", "set", f"veth{n}", "master", "cni0")
            lab.addr(pod, "eth0", f"198.18.{n}.2/24")
            lab.run("ip", "-n", pod, "route", "add", "default", "via", f"198.18.{n}.1")
            ov.pods[name] = pod
        others = {name: {f"198.18.{m}.0/24" for o, m in PODS.items() if o != name} for name in PODS}
        wait_for(lambda: all(set(ov.node_status(n)["accepted_routes"]) == others[n] for n in PODS), 20,
                 what="every node to route the others' pod CIDRs")
        ov.mtu = mtu
        yield ov
    finally:
        lab.close()


def test_pods_reach_each_other_without_vxlan(routed):
    ov = routed
    for name in PODS:
        st = ov.node_status(name)
        assert st["advertised_routes"] == [f"198.18.{PODS[name]}.0/24"]
        links = json.loads(ov.lab.run("ip", "-n", ov.nodes[name].ns, "-j", "link", "show").stdout)
        assert not [link["ifname"] for link in links if link.get("linkinfo", {}).get("info_kind") == "vxlan"
                    or link["ifname"].startswith("flannel")]
    for src in PODS:
        for dst, m in PODS.items():
            if src != dst:
                got = ov.lab.nsexec(ov.pods[src], "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2",
                                    f"198.18.{m}.2", check=False, timeout=30)
                assert got.returncode == 0, f"{src} -> {dst}: {got.stdout.decode()}"


def test_full_size_packets_pass_with_dont_fragment(routed):
    ov = routed
    for src, dst in (("r1", "r3"), ("r3", "r2"), ("r2", "r1")):
        got = ov.lab.nsexec(ov.pods[src], "ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2", "-M", "do",
                            "-s", str(ov.mtu - 28), f"198.18.{PODS[dst]}.2", check=False, timeout=30)
        assert got.returncode == 0, f"{src} -> {dst} at MTU {ov.mtu}: {got.stdout.decode()}"


def test_pod_tcp_is_byte_exact_and_keeps_pod_addresses(routed):
    ov = routed
    sent, received = transfer_between(ov.lab, ov.pods["r3"], ov.pods["r1"], "198.18.1.2", 9301, 8_000_000,
                                      timeout=90)
    assert sent == received
    # no masquerading of pod traffic: the pod on r1 sees r3's pod address as the sender
    echo = subprocess.Popen(["ip", "netns", "exec", ov.pods["r1"], sys.executable, "-c", WHO, "9302"],
                            stdout=subprocess.PIPE)
    ov.lab.processes.append(echo)
    try:
        assert echo.stdout.readline().strip() == b"listening"
        ov.lab.nsexec(ov.pods["r3"], sys.executable, "-c",
                      "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'hi', "
                      "('198.18.1.2', 9302))")
        out, _ = echo.communicate(timeout=10)
        assert out.decode().strip() == "198.18.3.2"
    finally:
        ov.lab.stop(echo, timeout=2)
    rules = ov.lab.nsexec(ov.nodes["r1"].ns, "nft", "list", "ruleset", check=False).stdout.decode()
    assert "masquerade" not in rules


def test_a_pod_address_from_the_wrong_node_is_dropped(routed):
    """r2 sends with a source inside r3's pod CIDR: r1 drops it and counts it."""
    ov = routed
    before = ov.node_status("r1")["drops"].get("spoofed_source", 0)
    ns = ov.nodes["r2"].ns
    ov.lab.addr(ns, "lo", "198.18.3.77/32")
    try:
        got = ov.lab.nsexec(ns, "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "1", "-I", "198.18.3.77",
                            "198.18.1.2", check=False, timeout=30)
        assert got.returncode != 0
        wait_for(lambda: ov.node_status("r1")["drops"].get("spoofed_source", 0) >= before + 3, 10,
                 what="r1 to count the spoofed pod source")
        # while r2's own pod address still passes
        ok = ov.lab.nsexec(ov.pods["r2"], "ping", "-n", "-q", "-c", "1", "-W", "2", "198.18.1.2", check=False)
        assert ok.returncode == 0
    finally:
        ov.lab.run("ip", "-n", ns, "addr", "del", "198.18.3.77/32", "dev", "lo")


def test_a_pod_cidr_the_relay_would_refuse_is_refused_on_the_node_and_changes_nothing(routed):
    """flannel's subnet.env is rewritten with a prefix inside the overlay: the node says so in
    one log line, keeps routing the pod CIDR it had, and stays joined."""
    ov = routed
    path = next(a for a in ov.node_procs["r2"].args if a.endswith("r2-subnet.env"))
    with open(path) as f:
        good = f.read()
    try:
        with open(path + ".tmp", "w") as f:
            f.write(good.replace("FLANNEL_SUBNET=198.18.2.1/24", "FLANNEL_SUBNET=100.64.9.1/24"))
        os.rename(path + ".tmp", path)
        wait_for(lambda: "cannot route" in ov.lab.log("r2"), 15, what="r2 to refuse the pod CIDR")
        lines = [line for line in ov.lab.log("r2").splitlines() if "cannot route" in line]
        assert len(lines) == 1 and "100.64.9.0/24" in lines[0] and "198.18.2.0/24" in lines[0]
        st = ov.node_status("r2")
        assert st["advertised_routes"] == ["198.18.2.0/24"] and st["relay"]["connected"]
        assert ov.node_procs["r2"].poll() is None
        ok = ov.lab.nsexec(ov.pods["r2"], "ping", "-n", "-q", "-c", "1", "-W", "2", "198.18.1.2", check=False)
        assert ok.returncode == 0
    finally:
        with open(path + ".tmp", "w") as f:
            f.write(good)
        os.rename(path + ".tmp", path)
