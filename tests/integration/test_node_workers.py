"""`tunneld join --workers N`: a node's traffic carried by N processes, each on a queue of
tunneld0 and a socket of the node's port, sealing in a lane of its own.

A public node with three workers, one behind a cone NAT with two, a public one with a
single process, one with no inbound path (relayed over UDP to the cone one) with two, and
one whose network drops UDP (its relay link is TCP) with the default: every pair mixes lane
counts, and streams arrive byte-exact whichever lanes carry them."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.lab import Lab, wait_for
from tunneld.net import express
from tunneld.proto import aead
from tests.integration.test_faults import in_background
from tests.lab.overlay import Overlay, transfer, transfer_between


@pytest.fixture(scope="module")
def ov():
    lab = Lab()
    try:
        ov = Overlay(lab)
        ov.start_relay()
        token = ov.token("--ttl", "1h")
        ov.join(lab.public_host("three"), "three", token, "--workers", "3")
        ov.join(lab.nat_host("two", "cone"), "two", token, "--workers", "2")
        # cryptography's AEAD where the others run tunneld's own (proto/aead.py): the same bytes
        ov.join(lab.public_host("one"), "one", token, "--workers", "1", env={"TUNNELD_NATIVE": "0"})
        ov.join(lab.nat_host("hidden", "no-inbound"), "hidden", token, "--workers", "2")
        ov.join(lab.nat_host("tcp", "no-udp"), "tcp", token)  # the default: one per core
        ov.wait_connected(timeout=60)
        for a, b in (("three", "two"), ("three", "one"), ("two", "one"), ("tcp", "three"), ("tcp", "two"),
                     ("hidden", "two")):
            assert ov.ping(a, ov.address(b), count=2).returncode == 0
        yield ov
    finally:
        lab.close()


def workers(ov, name):
    return ov.node_status(name)["workers"]


def test_each_node_runs_the_workers_asked_for_and_the_default_is_one_per_core(ov):
    assert [len(workers(ov, n)) for n in ("three", "two", "one")] == [3, 2, 1]
    assert len(workers(ov, "tcp")) == len(os.sched_getaffinity(0))
    assert all(w["running"] for n in ov.nodes for w in workers(ov, n))


def test_nodes_with_either_aead_carry_each_others_streams(ov):
    """Every pair with "one" mixes the two implementations (the streams tests below)."""
    assert ov.node_status("one")["offload"]["aead"] == "cryptography"
    assert not ov.node_status("one")["offload"]["express"]  # all Python (net/express.py)
    assert {ov.node_status(n)["offload"]["aead"] for n in ("three", "two", "hidden", "tcp")} == {aead.KIND}
    assert all(ov.node_status(n)["offload"]["express"] == (express.Express is not None)
               for n in ("three", "two", "hidden", "tcp"))
    sent, received = transfer(ov, "one", "three", 7390, 4 << 20)
    assert sent == received and sent.startswith(str(4 << 20))


def test_flows_take_the_lanes_in_turn_arrive_byte_exact_and_status_sums_them(ov):
    """host/spread.py's program on tunneld0: each new flow goes to the next queue, so eight
    flows one after another take three's three lanes in turn (by hash, one time in 2,187)."""
    def sent_to(src, dst):
        return next(p["tx_bytes"] for p in ov.node_status(src)["peers"] if p["name"] == dst)

    def carried(name):
        return [w["tx_bytes"] for w in workers(ov, name)[1:]]

    assert ov.node_status("three")["offload"]["spread"]
    assert not ov.node_status("one")["offload"]["spread"]  # one process: nothing to spread over
    size = 2 << 20
    lanes = []
    for i in range(8):
        before, by_worker = sent_to("three", "two"), carried("three")
        sent, received = transfer(ov, "three", "two", 7400 + i, size)
        assert sent == received and sent.startswith(str(size))
        # the workers report each second; the node's status adds their bytes to the peer's
        wait_for(lambda: sent_to("three", "two") - before >= size, 5, what="the workers' bytes in status")
        grew = [after - b for b, after in zip(by_worker, carried("three"))]
        lanes.append(next((lane for lane, n in enumerate(grew, start=1) if n >= size // 2), 0))
    assert all(b == (a + 1) % 3 for a, b in zip(lanes, lanes[1:])), lanes
    assert sum(w["rx_bytes"] for w in workers(ov, "two")[1:]) > 0
    # GRO trains from one endpoint mix lanes; each went to the process holding its window,
    # so none was refused as a replay or an unknown type, and nothing failed to open
    for name in ("three", "two"):
        drops = ov.node_status(name)["drops"]
        assert not {k: v for k, v in drops.items() if k in ("replay", "bad_type", "auth", "unknown_session",
                                                             "direct_unknown_session", "direct_bad_type")}, drops


def path(ov, src, dst):
    return next(p["path"] for p in ov.node_status(src)["peers"] if p["name"] == dst)


@pytest.mark.parametrize("a,b,kind", [("three", "two", "direct"), ("hidden", "two", "relay")])
def test_four_streams_both_ways_30_mb_arrive_byte_exact(ov, a, b, kind):
    """Four TCP streams at once, two each way, 30 MB in all, over several lanes on each side."""
    ov.ping(a, ov.address(b), count=2)
    wait_for(lambda: path(ov, a, b) == kind, 20, what=f"{a} -> {b} to be {kind}")
    base = 7600 if kind == "direct" else 7700
    size = 30 << 20 >> 2
    streams = [in_background(transfer, ov, src, dst, base + i, size, 120)
               for i, (src, dst) in enumerate([(a, b), (b, a), (a, b), (b, a)])]
    for result in streams:
        sent, received = result(150)
        assert sent == received and sent.startswith(str(size))
    assert path(ov, a, b) == kind


def test_ipv6_streams_over_several_lanes_arrive_byte_exact(ov):
    """IPv6 inside the overlay takes the workers' lanes as IPv4 does (engine/inner.py)."""
    a, b = "three", "two"
    six = {n: ov.node_status(n)["address6"] for n in (a, b)}
    size = 16 << 20 >> 2
    streams = [in_background(transfer_between, ov.lab, ov.nodes[src].ns, ov.nodes[dst].ns, six[dst], 7800 + i,
                             size, 120) for i, (src, dst) in enumerate([(a, b), (b, a), (a, b), (b, a)])]
    for result in streams:
        sent, received = result(150)
        assert sent == received and sent.startswith(str(size))


PAIRS = [("three", "one"), ("one", "three"), ("two", "one"), ("tcp", "three"), ("three", "tcp"), ("tcp", "two")]


@pytest.mark.parametrize("src,dst", PAIRS)
def test_mixed_lane_counts_and_the_relays_tcp_stream_carry_streams_byte_exact(ov, src, dst):
    """Three lanes into one process (a window per lane there); and over TCP, where the node's
    process hands each relayed datagram to the worker of its lane."""
    port = 7500 + 10 * PAIRS.index((src, dst))
    for i in range(3):
        sent, received = transfer(ov, src, dst, port + i, 3 << 20)
        assert sent == received


SNIFF_DIRECT = r"""
import socket, struct, sys, time
src_port, dst_ip, dst_port, want, times = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
sniff.settimeout(20)
captured = []
deadline = time.monotonic() + 20
while len(captured) < want and time.monotonic() < deadline:
    frame, addr = sniff.recvfrom(65535)
    if addr[2] != socket.PACKET_OUTGOING or frame[12:14] != b"\x08\x00":
        continue
    ip = frame[14:]
    ihl = (ip[0] & 15) * 4
    if ip[9] != 17 or socket.inet_ntoa(ip[16:20]) != dst_ip:
        continue
    sport, dport = struct.unpack("!HH", ip[ihl:ihl + 4])
    payload = ip[ihl + 8:struct.unpack("!H", ip[2:4])[0]]
    # direct DATA (type 3) in an odd lane (the counter's top byte), a datagram of 400 bytes
    if sport == src_port and dport == dst_port and payload[:1] == b"\x03" and payload[8] % 2 == 1 \
            and len(payload) > 300:
        captured.append(payload)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
for _ in range(times):
    for p in captured:  # sent again from the node's own port: the receiver's NAT lets it in
        raw.sendto(struct.pack("!HHHH", src_port, dst_port, 8 + len(p), 0) + p, (dst_ip, 0))
print(len(captured), flush=True)
"""


SPRAY = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for port in range(9000, 9032):
    s.sendto(bytes(400), (sys.argv[1], port))
"""


def test_a_datagram_replayed_into_a_workers_lane_is_dropped(ov):
    """Direct DATA that three sealed in odd lanes, captured as it left and sent again three
    times: two's worker 1, which holds those lanes' windows, drops every copy."""
    def endpoint(name):
        ep = next(n["endpoint"] for n in ov.status(ov.relay)["nodes"] if n["name"] == name)
        return ep.rsplit(":", 1)

    ov.ping("three", ov.address("two"), count=2)
    wait_for(lambda: next(p["path"] for p in ov.node_status("three")["peers"] if p["name"] == "two") == "direct",
             20, what="three -> two to go direct")
    _, three_port = endpoint("three")
    two_host, two_port = endpoint("two")
    before = ov.node_status("two")["drops"].get("replay", 0)
    sniff = subprocess.Popen(["ip", "netns", "exec", ov.nodes["three"].ns, sys.executable, "-c", SNIFF_DIRECT,
                              three_port, two_host, two_port, "3", "3"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    ov.lab.processes.append(sniff)
    time.sleep(0.5)
    # UDP to many ports: the kernel spreads flows over tunneld0's queues by their ports (pings
    # would not do: ICMP hashes by addresses alone, one queue), so some leave in lane 1
    for _ in range(10):
        ov.lab.nsexec(ov.nodes["three"].ns, sys.executable, "-c", SPRAY, ov.address("two"))
        if sniff.poll() is not None:
            break
    out, err = sniff.communicate(timeout=40)
    assert out.strip() == b"3", err
    wait_for(lambda: ov.node_status("two")["drops"].get("replay", 0) - before == 9, 10,
             what="9 replays dropped by two's worker")
    assert ov.ping("three", ov.address("two"), count=2).returncode == 0
    assert ov.node_procs["two"].poll() is None


def test_a_worker_that_dies_ends_the_node_which_comes_back_whole(ov):
    pid = workers(ov, "two")[1]["pid"]
    proc = ov.node_procs["two"]
    os.kill(pid, signal.SIGKILL)
    assert proc.wait(10) == 1
    assert "node worker 1" in ov.lab.log("two")
    ov.join(ov.nodes["two"], "two", None, "--workers", "2")
    ov.wait_connected(["two"], timeout=30)
    assert len(workers(ov, "two")) == 2
    sent, received = transfer(ov, "three", "two", 7990, 2 << 20)
    assert sent == received


def test_an_interface_made_single_queue_runs_one_worker_and_says_why(ov):
    """tunneld0 as tunneld 0.3.0 made it (one queue): re-attached as it is, never deleted."""
    host = ov.nodes["one"]
    assert ov.stop_node("one") == 0
    ov.lab.nsexec(host.ns, "ip", "link", "del", "tunneld0")
    ov.lab.nsexec(host.ns, "ip", "tuntap", "add", "dev", "tunneld0", "mode", "tun", "vnet_hdr")
    ov.join(host, "one", None, "--workers", "2")
    ov.wait_connected(["one"], timeout=30)
    assert len(workers(ov, "one")) == 1
    assert "made with one queue" in ov.lab.log("one")
    sent, received = transfer(ov, "three", "one", 7991, 2 << 20)
    assert sent == received


def test_a_second_join_on_the_same_interface_is_refused(ov):
    """A multi-queue tunneld0 would take any number of readers: the claim on its name does not."""
    host = ov.nodes["three"]
    other = os.path.join(ov.lab.tmp, "second-state")
    proc = ov.lab.tunneld(host, "join", "--relay", ov.relay_endpoint, "--token", ov.token(), "--name", "second",
                          "--state-dir", other, log_name="second")
    assert proc.wait(20) == 1
    log = ov.lab.log("second")
    assert "interface tunneld0 is in use by another process" in log, log
    assert ov.node_procs["three"].poll() is None
    assert ov.ping("two", ov.address("three"), count=2).returncode == 0
