"""The batched data path (TUN offload, UDP GSO/GRO, merged writes) delivers every byte, in order,
on direct and relayed paths, also when the path loses datagrams.

Uses the seeds' topology: public -> hidden goes direct (hidden's own packets open the way
back), natted -> hidden cannot and crosses the relay.
"""

import re
import sys
import time

import pytest

from tests.lab import Lab, wait_for
from tests.lab.overlay import Overlay, transfer, transfer_between

PAIRS = {"direct": ("public", "hidden"), "relay": ("natted", "hidden")}


def path(ov, src, dst):
    return next(p["path"] for p in ov.node_status(src)["peers"] if p["name"] == dst)


def offload(ov, name):
    return ov.node_status(name)["offload"]


@pytest.fixture(scope="module")
def paths_ready(overlay):
    for kind, (src, dst) in PAIRS.items():
        overlay.ping(src, overlay.address(dst), count=2)
        wait_for(lambda: path(overlay, src, dst) == kind, 30, what=f"{src} -> {dst} to go {kind}")
    return overlay


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_large_transfers_arrive_byte_exact_through_the_batched_path(paths_ready, kind):
    ov = paths_ready
    src, dst = PAIRS[kind]
    before_src, before_dst = offload(ov, src), offload(ov, dst)
    relay_before = ov.status(ov.relay)["offload"]
    assert before_src["tun"], "the TUN device must offload TCP segmentation to tunneld"
    sent, received = transfer(ov, src, dst, 7001, 24 << 20)
    assert sent == received and sent.startswith(str(24 << 20))
    assert path(ov, src, dst) == kind
    # The batching paths carried it, not a per-packet fallback (whichever of a node's workers
    # did, its counts reach status with its next report, each second).
    grew = ["tun_super_reads", "udp_gso_sends"], ["tun_merged_writes"] + (["udp_gro_reads"] if kind == "direct" else [])

    def batched():
        after_src, after_dst = offload(ov, src), offload(ov, dst)
        return [c for c in grew[0] if after_src.get(c, 0) <= before_src.get(c, 0)] + \
               [c for c in grew[1] if after_dst.get(c, 0) <= before_dst.get(c, 0)]

    wait_for(lambda: not batched(), 5, what="the batching counters to grow")
    if kind == "relay":
        relay = ov.status(ov.relay)["offload"]
        assert relay.get("udp_gro_reads", 0) > relay_before.get("udp_gro_reads", 0)


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_transfers_survive_random_datagram_loss(paths_ready, kind):
    """3% of the tunnel's datagrams lost at each end: every segment is its own AEAD unit, so
    a loss costs TCP one retransmission and the stream still arrives whole."""
    ov = paths_ready
    src, dst = PAIRS[kind]
    lab = ov.lab
    rule = ["INPUT", "-p", "udp", "-m", "statistic", "--mode", "random", "--probability", "0.03", "-j", "DROP"]
    added = []
    try:
        for name in (src, dst):
            lab.nsexec(ov.nodes[name].ns, "iptables", "-w", "5", "-I", *rule)
            added.append(name)
        sent, received = transfer(ov, src, dst, 7002, 8 << 20)
        assert sent == received and sent.startswith(str(8 << 20))
    finally:
        for name in added:
            lab.nsexec(ov.nodes[name].ns, "iptables", "-w", "5", "-D", *rule)


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_pod_traffic_over_vxlan_at_full_size_arrives_byte_exact(paths_ready, kind):
    """flannel's VXLAN over tunneld0 at the full overlay MTU: the kernel leaves each pod TCP
    checksum unfinished deep inside the packet; its place travels in the DATA header and the
    receiving kernel completes it. A wrong place, or a header that grows the packet past the
    path MTU, would corrupt or stall this stream."""
    ov = paths_ready
    src, dst = PAIRS[kind]
    lab = ov.lab
    dev = f"vxo{kind[0]}"
    ends = ((ov.nodes[src].ns, ov.address(src), ov.address(dst), 1),
            (ov.nodes[dst].ns, ov.address(dst), ov.address(src), 2))
    try:
        for ns, local, remote, i in ends:
            mtu = int(lab.nsexec(ns, "cat", "/sys/class/net/tunneld0/mtu").stdout)
            lab.nsexec(ns, "ip", "link", "add", dev, "type", "vxlan", "id", "1", "local", local,
                       "remote", remote, "dstport", "8472", "dev", "tunneld0")
            lab.nsexec(ns, "ip", "link", "set", dev, "mtu", str(mtu - 50), "up")
            lab.nsexec(ns, "ip", "addr", "add", f"198.18.{251 if kind == 'direct' else 252}.{i}/24", "dev", dev)
        pods = f"198.18.{251 if kind == 'direct' else 252}.2"
        before, before_dst = offload(ov, src), offload(ov, dst)
        write_errors = ov.node_status(dst)["drops"].get("tun_write_error", 0)
        sent, received = transfer_between(lab, ends[0][0], ends[1][0], pods, 7003, 8 << 20, timeout=40)
        assert sent == received and sent.startswith(str(8 << 20))
        # Where the kernel hands VXLAN over whole, tunneld took it whole and cut it itself, and
        # the receiver gave it back whole (tunnel_merge.py), every write taken.
        after = offload(ov, src)
        assert after["tun_udp_tunnel"] == kernel_offers_udp_tunnel_offload()
        if after["tun_udp_tunnel"]:  # the workers' reads reach status with their next report, each second
            wait_for(lambda: offload(ov, src).get("tun_tunnel_reads", 0) > before.get("tun_tunnel_reads", 0), 5,
                     what="tunnel super-packets read whole")
            wait_for(lambda: offload(ov, dst).get("tun_tunnel_writes", 0) > before_dst.get("tun_tunnel_writes", 0) + 10,
                     5, what="tunnel super-packets written whole")
        assert ov.node_status(dst)["drops"].get("tun_write_error", 0) == write_errors
    finally:
        for ns, *_ in ends:
            lab.nsexec(ns, "ip", "link", "del", dev, check=False)


def ping_times(ov, src: str, dst: str, count: int) -> list[float]:
    out = ov.lab.nsexec(ov.nodes[src].ns, "ping", "-n", "-c", str(count), "-i", "0.05", "-W", "3", ov.address(dst),
                        check=False, timeout=30).stdout.decode()
    return [float(t) for t in re.findall(r"time=([\d.]+)", out)]


@pytest.mark.parametrize("kind", sorted(PAIRS))
def test_a_flood_leaves_no_backlog_for_the_packets_after_it(paths_ready, kind):
    """Small datagrams faster than the receiver opens them fill its socket's 4 MB buffer:
    seconds of work. Behind such a standing queue the receiver drops the peers' data unopened
    (`stale`), so a ping right after the flood is answered at once, not after the backlog."""
    ov = paths_ready
    src, dst = PAIRS[kind]
    lab = ov.lab
    stale = ov.node_status(dst)["drops"].get("stale", 0)
    server = lab.spawn(ov.nodes[dst].ns, "iperf3", "-s", "-1", "-B", ov.address(dst), "-p", "5206")
    try:
        time.sleep(0.3)  # let the server bind
        lab.nsexec(ov.nodes[src].ns, "iperf3", "-c", ov.address(dst), "-p", "5206", "-t", "3", "-u", "-l", "64",
                   "-b", "0", timeout=30)
        times = ping_times(ov, src, dst, 10)
    finally:
        lab.stop(server, timeout=2)
    assert len(times) == 10, times
    assert max(times) < 300, times  # without the drops: up to a second behind the flood
    assert path(ov, src, dst) == kind
    wait_for(lambda: ov.node_status(dst)["drops"].get("stale", 0) > stale, 5, what="stale data dropped")


PROBE = """
import fcntl, os, struct
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"probe0", 0x1000 | 0x4000 | 0x0001))
fcntl.ioctl(fd, 0x400454D8, struct.pack("i", 24))
try:
    fcntl.ioctl(fd, 0x400454D0, 0x01 | 0x02 | 0x80 | 0x100)
    print("yes")
except OSError:
    print("no")
"""


def kernel_offers_udp_tunnel_offload() -> bool:
    """Asked of the kernel directly, on a scratch TUN device in a namespace of its own."""
    lab = Lab()
    try:
        ns = lab.add_namespace("probe")
        return lab.nsexec(ns, sys.executable, "-c", PROBE).stdout.strip() == b"yes"
    finally:
        lab.close()


def test_offload_the_kernel_refuses_falls_back_and_pod_traffic_still_flows():
    """TUNNELD_OFFLOAD=tcp asks for TCP segmentation only (as on a kernel without UDP-tunnel
    offload), =none for nothing (a kernel that refuses TSO as well): VXLAN then reaches
    tunneld0 packet by packet, and every byte still arrives."""
    lab = Lab()
    try:
        ov = Overlay(lab)
        ov.start_relay()
        token = ov.token()
        for name, mode in (("tcp-only", "tcp"), ("no-offload", "none")):
            ov.join(lab.public_host(name), name, token, env={"TUNNELD_OFFLOAD": mode})
        ov.wait_connected()
        assert offload(ov, "tcp-only")["tun"] and not offload(ov, "tcp-only")["tun_udp_tunnel"]
        assert not offload(ov, "no-offload")["tun"] and not offload(ov, "no-offload")["tun_udp_tunnel"]
        ends = [(ov.nodes[n].ns, ov.address(n), ov.address(o), i)
                for n, o, i in (("tcp-only", "no-offload", 1), ("no-offload", "tcp-only", 2))]
        for ns, local, remote, i in ends:
            mtu = int(lab.nsexec(ns, "cat", "/sys/class/net/tunneld0/mtu").stdout)
            lab.nsexec(ns, "ip", "link", "add", "vxf", "type", "vxlan", "id", "1", "local", local, "remote", remote,
                       "dstport", "8472", "dev", "tunneld0")
            lab.nsexec(ns, "ip", "link", "set", "vxf", "mtu", str(mtu - 50), "up")
            lab.nsexec(ns, "ip", "addr", "add", f"198.18.253.{i}/24", "dev", "vxf")
        for (src, _, _, _), (dst, _, _, i) in ((ends[0], ends[1]), (ends[1], ends[0])):
            sent, received = transfer_between(lab, src, dst, f"198.18.253.{i}", 7004 + i, 8 << 20, timeout=60)
            assert sent == received and sent.startswith(str(8 << 20))
        assert "tun_tunnel_reads" not in offload(ov, "tcp-only")
        # IPv6 inside the overlay: without UDP-tunnel offload the device hands over IPv6 TCP
        # super-packets too (TSO6), cut here as the kernel would (offload.py)
        before = offload(ov, "tcp-only").get("tun_super_reads", 0)
        six = ov.node_status("no-offload")["address6"]
        sent, received = transfer_between(lab, ov.nodes["tcp-only"].ns, ov.nodes["no-offload"].ns, six, 7010,
                                          8 << 20, timeout=60)
        assert sent == received and sent.startswith(str(8 << 20))
        wait_for(lambda: offload(ov, "tcp-only").get("tun_super_reads", 0) > before, 5,
                 what="IPv6 TCP super-packets read")
    finally:
        lab.close()


def test_an_unknown_offload_setting_is_refused_in_one_line():
    lab = Lab()
    try:
        ov = Overlay(lab)
        ov.start_relay()
        proc = ov.join(lab.public_host("bogus"), "bogus", ov.token(), env={"TUNNELD_OFFLOAD": "turbo"})
        assert proc.wait(20) == 2
        lines = [line for line in lab.log("bogus").splitlines() if "TUNNELD_OFFLOAD" in line]
        assert lines and "all, tcp, none" in lines[0]
    finally:
        lab.close()


REFUSED = """
import os, socket, sys
from collections import Counter
sys.path.insert(0, os.getcwd())
from tunneld.host.tun import Tun
from tunneld.net.dataplane import DataPlane
from tunneld.engine import tunnel_merge
from tests.unit.test_offload import vxlan_tunnel_read
from tunneld.engine.offload import split
tun = Tun.open("refuse0", persist=False, offload="all")
assert tun.tunnel, "this kernel offers UDP-tunnel offload"
# Merged packets without the no-op options, as a kernel that took the flags could still
# refuse them (it does: the outer UDP header at 20 is before 34).
tunnel_merge.PAD, tunnel_merge.NOPS = 0, b""
os.system("ip link set refuse0 up")
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
drops = Counter()
dp = DataPlane(tun.fd, True, sock, 1420, drops, lambda: None)
for round in range(2):
    dp.coalescing = True
    for s in split(vxlan_tunnel_read(os.urandom(20000), 1318, seq=5000 + 20000 * round), 24)[0]:
        dp.write_tun(s)
    dp.coalescing = False
    dp.flush()
    print(round, drops["tun_write_error"], dp.stats["tun_tunnel_refused"], dp.coalescer.tunnel)
tun.close()
"""


def test_a_merged_vxlan_packet_the_kernel_refuses_turns_merging_off_and_the_rest_flows():
    """A kernel that takes the UDP-tunnel flags but refuses a merged write: that one write is
    lost (TCP resends it), and every later VXLAN packet goes alone and is taken."""
    if not kernel_offers_udp_tunnel_offload():
        pytest.fail("this test needs a kernel with UDP-tunnel offload on TUN (Linux 6.17 or later)")
    lab = Lab()
    try:
        ns = lab.add_namespace("refuse")
        out = lab.nsexec(ns, sys.executable, "-c", REFUSED).stdout.decode().split("\n")
        assert out[0] == "0 1 1 False", out  # the one merged write refused, merging off
        assert out[1] == "1 1 1 False", out  # the next batch: 16 single writes, all taken
    finally:
        lab.close()
