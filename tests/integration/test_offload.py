"""The batched data path (TUN offload, UDP GSO/GRO, merged writes) delivers every byte, in order,
on direct and relayed paths, also when the path loses datagrams.

Uses the seeds' topology: public -> hidden goes direct (hidden's own packets open the way
back), natted -> hidden cannot and crosses the relay.
"""

import pytest

from tests.lab import wait_for
from tests.lab.overlay import transfer, transfer_between

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
    after_src, after_dst = offload(ov, src), offload(ov, dst)
    # The batching paths carried it, not a per-packet fallback.
    assert after_src.get("tun_super_reads", 0) > before_src.get("tun_super_reads", 0)
    assert after_src.get("udp_gso_sends", 0) > before_src.get("udp_gso_sends", 0)
    assert after_dst.get("tun_merged_writes", 0) > before_dst.get("tun_merged_writes", 0)
    if kind == "relay":
        relay = ov.status(ov.relay)["offload"]
        assert relay.get("udp_gro_reads", 0) > relay_before.get("udp_gro_reads", 0)
    else:
        assert after_dst.get("udp_gro_reads", 0) > before_dst.get("udp_gro_reads", 0)


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
        sent, received = transfer_between(lab, ends[0][0], ends[1][0], pods, 7003, 8 << 20, timeout=40)
        assert sent == received and sent.startswith(str(8 << 20))
    finally:
        for ns, *_ in ends:
            lab.nsexec(ns, "ip", "link", "del", dev, check=False)
