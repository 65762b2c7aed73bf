"""`tunneld doctor` on real hosts in the namespace lab: each test plants one of the traps
operators meet (flannel on the wrong interface or MTU, kubelet's --node-ip, forwarding,
reverse-path filtering, a route or a resolver that fights the overlay, UDP blocked, an MTU
black hole on the way to the relay, the relay's clock off, a firewall rule on the relay
dropping its port, the relay's etcd down and its disk nearly full) and sees doctor name it and say how to fix it; a healthy node and the
relay pass with exit 0."""

import os
import shutil

import pytest

from tests.lab import Lab, tunneld_command, wait_for
from tests.lab.overlay import Overlay


@pytest.fixture(scope="module")
def ov():
    lab = Lab()
    planted = []  # /etc/netns/NS directories: ip netns exec mounts their files over /etc's
    try:
        ov = Overlay(lab)
        ov.planted = planted
        ov.start_relay("--auto-approve-routes", "198.18.0.0/16")
        token = ov.token("--ttl", "1h")
        ov.join(lab.public_host("da"), "da", token, "--advertise-routes", "198.18.70.0/24")
        ov.join(lab.public_host("db"), "db", token, "--accept-routes")
        ov.join(lab.nat_host("dt", "no-udp"), "dt", token)
        ov.wait_connected(timeout=60)
        wait_for(lambda: "198.18.70.0/24" in ov.node_status("db")["accepted_routes"], 20,
                 what="db to accept da's route")
        yield ov
    finally:
        lab.close()
        for path in planted:
            shutil.rmtree(path, ignore_errors=True)


def doctor(ov, name):
    host = ov.relay if name == "relay" else ov.nodes[name]
    out = ov.lab.nsexec(host.ns, *tunneld_command(), "doctor", "--state-dir", host.state_dir, check=False)
    return out.returncode, out.stdout.decode()


def sh(ov, name, *cmd):
    ov.lab.nsexec(ov.nodes[name].ns, *cmd)


def plant(ov, name, relative, text):
    """A file the node's namespace sees at /etc/RELATIVE (ip netns exec mounts it there)."""
    root = f"/etc/netns/{ov.nodes[name].ns}"
    if root not in ov.planted:
        ov.planted.append(root)
    path = os.path.join(root, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_a_healthy_node_and_the_relay_pass(ov):
    code, out = doctor(ov, "da")
    assert code == 0 and "BAD" not in out, out
    assert f"tunneld0 is up with {ov.address('da')}" in out and "kubelet would accept" in out
    assert "1500-byte packets with DF set reach the relay" in out and "the relay's clock is within 1 s" in out
    code, out = doctor(ov, "relay")
    assert code == 0 and "store (sqlite) healthy" in out, out
    assert f"listening on UDP and TCP port {ov.port}, no firewall rule here drops it" in out


def test_a_node_whose_daemon_is_not_running(ov):
    host = ov.nodes["da"]
    out = ov.lab.nsexec(host.ns, *tunneld_command(), "doctor", "--state-dir", host.state_dir + "-none", check=False)
    assert out.returncode == 1 and "tunneld is not running here" in out.stdout.decode()


def test_flannel_on_the_wrong_interface_then_the_wrong_mtu_then_pods_larger(ov):
    name, addr = "db", ov.address("db")
    underlay = ov.nodes["db"].address
    sh(ov, name, "ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", underlay, "dev", "eth0",
       "dstport", "8472", "nolearning")
    try:
        code, out = doctor(ov, name)
        assert code == 1 and "flannel.1 is not on tunneld0" in out and "--iface=tunneld0" in out, out
        sh(ov, name, "ip", "link", "del", "flannel.1")
        mtu = ov.node_status(name)["mtu"]
        sh(ov, name, "ip", "link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", addr, "dev",
           "tunneld0", "dstport", "8472", "nolearning")
        sh(ov, name, "ip", "link", "set", "flannel.1", "mtu", str(mtu - 50), "up")
        # tunneld0 smaller than flannel.1 was made for (the overlay's MTU fell since flannel started)
        sh(ov, name, "ip", "link", "set", "tunneld0", "mtu", str(mtu - 100))
        try:
            code, out = doctor(ov, name)
        finally:
            sh(ov, name, "ip", "link", "set", "tunneld0", "mtu", str(mtu))
        assert code == 1 and f"flannel.1's MTU is {mtu - 50}, more than {mtu - 150}" in out, out
        assert f"tunneld0's MTU is {mtu - 100}, where tunneld set {mtu}" in out
        sh(ov, name, "ip", "link", "add", "cni0", "type", "bridge")
        sh(ov, name, "ip", "link", "set", "cni0", "mtu", "1500")
        code, out = doctor(ov, name)
        assert code == 1 and f"cni0's MTU 1500 is larger than flannel.1's {mtu - 50}" in out, out
        sh(ov, name, "ip", "link", "set", "cni0", "mtu", str(mtu - 50))
        code, out = doctor(ov, name)
        assert f"flannel.1 sits on tunneld0 with MTU {mtu - 50}" in out and code == 0, out
    finally:
        for dev in ("flannel.1", "cni0"):
            ov.lab.nsexec(ov.nodes[name].ns, "ip", "link", "del", dev, check=False)


def test_kubelets_node_ip_is_not_the_overlay_address(ov):
    plant(ov, "da", "default/kubelet", f"KUBELET_EXTRA_ARGS=--node-ip={ov.nodes['da'].address}\n")
    code, out = doctor(ov, "da")
    assert code == 1 and f"kubelet's --node-ip in /etc/default/kubelet is {ov.nodes['da'].address}" in out, out
    assert f"--node-ip={ov.address('da')}" in out
    plant(ov, "da", "default/kubelet", f"KUBELET_EXTRA_ARGS=--node-ip={ov.address('da')}\n")
    code, out = doctor(ov, "da")
    assert code == 0 and "kubelet's --node-ip in /etc/default/kubelet is the overlay address" in out, out


def test_a_resolver_inside_the_overlay(ov):
    plant(ov, "db", "resolv.conf", "nameserver 100.64.0.53\n")
    try:
        code, out = doctor(ov, "db")
        assert code == 1 and "the resolver 100.64.0.53 in /etc/resolv.conf is inside the overlay" in out, out
    finally:
        plant(ov, "db", "resolv.conf", "nameserver 192.0.2.53\n")


def test_forwarding_off_where_routes_are_advertised(ov):
    sh(ov, "da", "sysctl", "-qw", "net.ipv4.ip_forward=0")
    try:
        code, out = doctor(ov, "da")
        assert code == 1 and "advertises routes but IPv4 forwarding is off" in out, out
        assert "sysctl -w net.ipv4.ip_forward=1" in out
    finally:
        sh(ov, "da", "sysctl", "-qw", "net.ipv4.ip_forward=1")


def test_strict_reverse_path_filtering_where_routes_are_accepted(ov):
    sh(ov, "db", "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0")
    sh(ov, "db", "sysctl", "-qw", "net.ipv4.conf.tunneld0.rp_filter=1")
    try:
        code, out = doctor(ov, "db")
        assert code == 1 and "reverse-path filtering is strict on tunneld0" in out, out
    finally:
        sh(ov, "db", "sysctl", "-qw", "net.ipv4.conf.tunneld0.rp_filter=2")


def test_a_route_that_wins_over_tunneld0(ov):
    sh(ov, "db", "ip", "route", "add", "198.18.70.0/25", "dev", "eth0")
    try:
        code, out = doctor(ov, "db")
        assert code == 1 and "traffic to 198.18.70.0 leaves through eth0, not tunneld0" in out, out
    finally:
        sh(ov, "db", "ip", "route", "del", "198.18.70.0/25", "dev", "eth0")


def test_udp_to_the_relay_blocked(ov):
    code, out = doctor(ov, "dt")
    assert code == 1 and "UDP to the relay is blocked, so tunneld fell back to TCP" in out, out


def test_an_mtu_black_hole_on_the_way_to_the_relay(ov):
    router = ov.nodes["dt"].router  # dt's link is 1500, so tunneld0 took 1432; its NAT's uplink now carries 1400
    ov.lab.nsexec(router.ns, "ip", "link", "set", "wan", "mtu", "1400")
    try:
        code, out = doctor(ov, "dt")
        assert code == 1, out
        assert ("the path to the relay carries at most 1400 bytes with DF set, but tunneld0's MTU 1432 needs 1500"
                in out), out
        assert f"ip route replace {ov.relay.address} via 198.19.{router.lan}.1 mtu 1400" in out, out
    finally:
        ov.lab.nsexec(router.ns, "ip", "link", "set", "wan", "mtu", "1500")
        sh(ov, "dt", "ip", "route", "flush", "cache")


def test_a_firewall_rule_on_the_relay_dropping_its_port(ov):
    rule = ["-s", "198.51.100.250", "-p", "tcp", "--dport", str(ov.port), "-j", "DROP"]  # a stranger, not our nodes
    ov.lab.nsexec(ov.relay.ns, "iptables", "-w", "5", "-I", "INPUT", *rule)
    try:
        code, out = doctor(ov, "relay")
        assert code == 1 and f"a firewall rule drops tcp to port {ov.port} (table ip filter, chain INPUT)" in out, out
    finally:
        ov.lab.nsexec(ov.relay.ns, "iptables", "-w", "5", "-D", "INPUT", *rule)


LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"  # Debian's libfaketime


def test_the_relays_clock_far_behind_this_hosts():
    with Lab() as lab:  # a relay of its own, 95 s in the past (libfaketime: its wall clock only shifts)
        # libfaketime preloaded into the relay itself: the faketime command runs its program as a
        # child, which stopping the command by its PID would leave running
        ov = Overlay(lab, relay_env={"LD_PRELOAD": LIBFAKETIME, "FAKETIME": "-95s"})
        ov.start_relay()
        ov.join(lab.public_host("dk"), "dk", ov.token("--ttl", "1h"))
        ov.wait_connected(timeout=60)
        wait_for(lambda: ov.node_status("dk")["relay"]["clock_skew_s"] is not None, 20, what="a pong with the time")
        code, out = doctor(ov, "dk")
        assert code == 1 and "the relay's clock is 95 s behind this host's" in out, out
        assert "timedatectl set-ntp true" in out


def test_a_relay_whose_store_is_down_and_whose_disk_is_nearly_full():
    from tests.lab.relays import Etcd, Relays
    with Lab() as lab:
        etcd = Etcd(lab, members=1)
        etcd.start_all()
        r = Relays(lab, etcd, count=1)
        state = r.hosts[0].state_dir
        lab.run("mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tunneld-doctor-test", state)  # 8 MB of disk
        try:
            r.start(0)
            etcd.stop(0)
            wait_for(lambda: r.status(0)["store"]["problem"], 15, what="the relay to miss etcd")
            out = lab.nsexec(r.hosts[0].ns, *tunneld_command(), "doctor", "--state-dir", state, check=False)
            text = out.stdout.decode()
            assert out.returncode == 1 and "the relay cannot reach its store (etcd)" in text, text
            assert "etcdctl endpoint health" in text and "MB free for the state directory" in text, text
            r.stop(0)
        finally:
            r.stop(0)
            lab.run("umount", "-l", state, check=False)
