"""`tunneld serve --workers N`: more processes forwarding relayed traffic on the relay's port.

Two relayed pairs of public hosts (their direct UDP to each other dropped, so that they stay
on the relay, with the ports they chose: no NAT rewrites them), on fixed ports of both
parities, so that the steering program (source port mod 2) gives one pair's datagrams to
the relay's own socket and the other's to the worker; and a node whose network drops UDP,
reached over its TCP stream, which only the relay's process holds."""

import os
import sys
import signal

import pytest

from tests.lab import Lab, wait_for
from tests.lab.overlay import Overlay, transfer

PAIRS = (("even-a", 41000, "even-b", 41002), ("odd-a", 41001, "odd-b", 41003))


def path(ov, src, dst):
    return next(p["path"] for p in ov.node_status(src)["peers"] if p["name"] == dst)


@pytest.fixture(scope="module")
def workers():
    lab = Lab()
    try:
        ov = Overlay(lab)
        ov.start_relay("--workers", "2")
        token = ov.token()
        for a, pa, b, pb in PAIRS:
            ha, hb = lab.public_host(a), lab.public_host(b)
            for h, other in ((ha, hb), (hb, ha)):
                for chain, flag in (("OUTPUT", "-d"), ("INPUT", "-s")):
                    lab.nsexec(h.ns, "iptables", "-w", "5", "-I", chain, flag, other.address, "-p", "udp", "-j", "DROP")
            ov.join(ha, a, token, "--port", str(pa))
            ov.join(hb, b, token, "--port", str(pb))
        ov.join(lab.nat_host("tcp-only", "no-udp"), "tcp-only", token)
        ov.wait_connected(timeout=60)
        for a, _, b, _ in PAIRS:
            assert ov.ping(a, ov.address(b), count=2).returncode == 0
            assert path(ov, a, b) == "relay"
        yield ov
    finally:
        lab.close()


def relay_node(ov, name):
    return next(n for n in ov.status(ov.relay)["nodes"] if n["name"] == name)


def test_relayed_streams_through_the_worker_arrive_byte_exact_and_are_counted(workers):
    ov = workers
    (worker,) = ov.status(ov.relay)["workers"]
    assert worker["running"]
    before = {name: relay_node(ov, name)["rx_bytes"] for name in ("odd-a", "odd-b")}
    for src, dst, port in (("odd-a", "odd-b", 7101), ("odd-b", "odd-a", 7102), ("even-a", "even-b", 7103)):
        sent, received = transfer(ov, src, dst, port, 20 << 20)
        assert sent == received and sent.startswith(str(20 << 20))
    # the odd pair's datagrams went to the worker, whose counts reach the relay's status (each second)
    wait_for(lambda: ov.status(ov.relay)["workers"][0]["forwarded"] > 10_000, 5, what="the worker's report")
    wait_for(lambda: all(relay_node(ov, n)["rx_bytes"] - before[n] > 20 << 20 for n in ("odd-a", "odd-b")), 5,
             what="the worker's counts in the relay's status")


def test_control_still_reaches_the_relay_and_a_node_that_moves_is_followed(workers):
    """Joins, pings and revocation are the relay process's; a node restarted on another port
    (the other parity: the other process) is forwarded at its new endpoint at once."""
    ov = workers
    host = ov.nodes["odd-b"]
    ov.stop_node("odd-b")
    ov.join(host, "odd-b", None, "--port", "41004")
    ov.wait_connected()
    assert ov.ping("odd-a", ov.address("odd-b"), count=3).returncode == 0
    sent, received = transfer(ov, "odd-a", "odd-b", 7104, 4 << 20)
    assert sent == received


def test_a_node_on_tcp_is_reached_through_the_relay_from_a_workers_share(workers):
    """odd-a's datagrams reach the worker, which hands those for tcp-only to the relay's
    process, the one holding tcp-only's stream: all of them, not a stranger's share."""
    ov = workers
    st = ov.node_status("tcp-only")
    assert st["relay"]["transport"] == "tcp"
    sent, received = transfer(ov, "odd-a", "tcp-only", 7106, 8 << 20)
    assert sent == received
    drops = ov.status(ov.relay)["drops"]
    assert "worker_handoff_rate_limited" not in drops  # a stranger's cap would drop thousands here
    assert drops.get("worker_handoff_full", 0) < 60  # under 1 % of the stream, were a burst to overflow


FLOOD = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 41999))  # odd: the worker's share
relay = (sys.argv[1], int(sys.argv[2]))
for i in range(30000):
    s.sendto(bytes((4, 0, 0, 0, 100, 64, 0, 2)) + i.to_bytes(4, "big") * 8, relay)
"""


def test_a_strangers_relayed_flood_at_a_worker_is_dropped_and_counted(workers):
    """30,000 RELAYED datagrams from an endpoint no member holds: the worker hands the relay
    at most its share a second, drops the rest, and counts both; members' pings go on."""
    ov = workers
    host, port = ov.relay_endpoint.split(":")
    stranger = ov.lab.public_host("stranger")
    ov.lab.nsexec(stranger.ns, sys.executable, "-c", FLOOD, host, port, timeout=60)
    assert ov.ping("odd-a", ov.address("even-b"), count=3).returncode == 0

    def counted():
        drops = ov.status(ov.relay)["drops"]
        return drops.get("worker_handoff_rate_limited", 0) > 0 and drops.get("relayed_unknown_source", 0) > 0
    wait_for(counted, 5, what="the flood to be counted")
    assert ov.relay_proc.poll() is None


def test_a_worker_that_dies_leaves_its_nodes_to_the_relay(workers):
    ov = workers
    (worker,) = ov.status(ov.relay)["workers"]
    os.kill(worker["pid"], signal.SIGKILL)
    wait_for(lambda: not ov.status(ov.relay)["workers"][0]["running"], 10, what="the worker to be gone")
    assert "relay worker 1" in ov.lab.log("relay")
    sent, received = transfer(ov, "odd-a", "even-b", 7105, 8 << 20)
    assert sent == received
    assert ov.relay_proc.poll() is None
