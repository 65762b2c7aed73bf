"""Direct paths in the namespace lab: which pairs go direct, that the relay then carries none of
their data, switching both ways, surviving the relay, and TCP where UDP is blocked.

  pub1, pub2     public addresses
  cone1, cone2   each behind its own MASQUERADE (port-preserving, address+port restricted)
  mate           behind cone1's NAT too, on the same LAN
  sym            behind MASQUERADE --random-fully (a new port for every destination)
  noudp          behind a NAT that drops all UDP
"""

import signal
import time

import pytest

from tests.lab import Lab, wait_for
from tests.lab.overlay import Overlay, transfer

DIRECT = ("pub1", "pub2", "cone1", "cone2")


@pytest.fixture(scope="module")
def paths_lab():
    lab = Lab()
    try:
        ov = Overlay(lab)
        ov.start_relay()
        cone1 = lab.nat_host("cone1", "cone")
        hosts = {"pub1": lab.public_host("pub1"), "pub2": lab.public_host("pub2"), "cone1": cone1,
                 "cone2": lab.nat_host("cone2", "cone"), "mate": lab.nat_host("mate", behind=cone1),
                 "sym": lab.nat_host("sym", "symmetric"), "noudp": lab.nat_host("noudp", "no-udp")}
        token = ov.token()
        for name, host in hosts.items():
            ov.join(host, name, token)
        ov.wait_connected(timeout=60)
        yield ov
    finally:
        lab.close()


def peer(ov, src, dst):
    return next(p for p in ov.node_status(src)["peers"] if p["name"] == dst)


def pairs(names):
    return [(a, b) for a in names for b in names if a != b]


def test_public_and_cone_nodes_go_direct_within_30_seconds(paths_lab):
    overlay = paths_lab
    started = time.monotonic()
    for a, b in pairs(DIRECT):
        assert overlay.ping(a, overlay.address(b), count=1).returncode == 0
    wait_for(lambda: all(peer(overlay, a, b)["path"] == "direct" for a, b in pairs(DIRECT)), 30,
             interval=0.5, what="every public and cone pair to go direct")
    assert time.monotonic() - started < 30
    for a, b in pairs(DIRECT):
        p = peer(overlay, a, b)
        assert p["endpoint"] != overlay.relay_endpoint and isinstance(p["rtt_ms"], float)


def test_the_relay_carries_none_of_their_data_afterwards(paths_lab):
    overlay = paths_lab
    counted = lambda: {n["name"]: (n["rx_bytes"], n["tx_bytes"])  # noqa: E731
                       for n in overlay.status(overlay.relay)["nodes"] if n["name"] in DIRECT}
    before = counted()
    for a, b in (("pub1", "cone2"), ("cone1", "cone2"), ("cone2", "pub2")):
        sent, received = transfer(overlay, a, b, 9000, 2_000_000)
        assert sent == received
    for a, b in pairs(DIRECT):
        assert overlay.ping(a, overlay.address(b), count=2).returncode == 0
    assert counted() == before


def test_full_size_packets_on_direct_paths(paths_lab):
    overlay = paths_lab
    for a, b in (("pub1", "cone1"), ("cone1", "cone2")):
        mtu = overlay.node_status(a)["mtu"]
        r = overlay.ping(a, overlay.address(b), count=2, size=mtu - 28)
        assert r.returncode == 0 and peer(overlay, a, b)["path"] == "direct"


def test_neighbours_behind_one_nat_find_each_other_on_their_lan(paths_lab):
    overlay = paths_lab
    assert overlay.ping("cone1", overlay.address("mate"), count=1).returncode == 0
    # Each side proves the path with its own probes: wait for both.
    wait_for(lambda: peer(overlay, "cone1", "mate")["path"] == "direct"
             and peer(overlay, "mate", "cone1")["path"] == "direct", 20, interval=0.5,
             what="cone1 and mate to go direct, both ways")
    assert peer(overlay, "cone1", "mate")["endpoint"].startswith("198.19.")  # the LAN, not the NAT
    assert peer(overlay, "mate", "cone1")["endpoint"].startswith("198.19.")


def test_pairs_that_cannot_go_direct_stay_relayed_and_work(paths_lab):
    overlay = paths_lab
    for a, b in (("sym", "cone1"), ("cone2", "sym")):
        for _ in range(3):
            assert overlay.ping(a, overlay.address(b), count=2).returncode == 0
        time.sleep(2)
    assert peer(overlay, "sym", "cone1")["path"] == "relay"
    assert peer(overlay, "cone2", "sym")["path"] == "relay"
    sent, received = transfer(overlay, "cone1", "sym", 9001, 1_000_000)
    assert sent == received


def test_the_udp_blocked_node_reaches_everyone_over_tcp(paths_lab):
    overlay = paths_lab
    assert overlay.node_status("noudp")["relay"]["transport"] == "tcp"
    for other in ("pub1", "cone2", "sym", "mate"):
        assert overlay.ping("noudp", overlay.address(other), count=2).returncode == 0
        assert overlay.ping(other, overlay.address("noudp"), count=2).returncode == 0
    assert all(p["path"] == "relay" for p in overlay.node_status("noudp")["peers"])


def test_a_pair_falls_back_to_the_relay_and_returns(paths_lab):
    overlay = paths_lab
    lab = overlay.lab
    a, b = "pub1", "pub2"
    b_ip = overlay.nodes[b].address
    assert overlay.ping(a, overlay.address(b), count=1).returncode == 0
    wait_for(lambda: peer(overlay, a, b)["path"] == "direct", 20, interval=0.5, what="a direct path")
    rule = ["-p", "udp", "-d", b_ip, "-j", "DROP"]
    lab.nsexec(overlay.nodes[a].ns, "iptables", "-w", "5", "-I", "OUTPUT", *rule)
    try:
        started = time.monotonic()
        # Traffic keeps flowing while the path changes under it.
        # Each side falls back DIRECT_TIMEOUT after its own last answered probe; their probes
        # are up to one keepalive apart, so wait for both.
        wait_for(lambda: overlay.ping(a, overlay.address(b), count=1).returncode == 0
                 and peer(overlay, a, b)["path"] == "relay" and peer(overlay, b, a)["path"] == "relay",
                 20, interval=0.5, what="the fallback, both ways")
        assert time.monotonic() - started < 15
    finally:
        lab.nsexec(overlay.nodes[a].ns, "iptables", "-w", "5", "-D", "OUTPUT", *rule)
    wait_for(lambda: overlay.ping(a, overlay.address(b), count=1).returncode == 0
             and peer(overlay, a, b)["path"] == "direct", 40, interval=1, what="the way back to direct")


def test_direct_pairs_keep_talking_without_the_relay(paths_lab):
    overlay = paths_lab
    overlay.stop_relay(signal.SIGKILL)
    time.sleep(2)
    for a, b in (("pub1", "cone1"), ("cone1", "cone2"), ("cone2", "pub2"), ("cone1", "mate")):
        r = overlay.ping(a, overlay.address(b), count=3)
        assert r.returncode == 0, f"{a} -> {b} without the relay"
    sent, received = transfer(overlay, "cone2", "cone1", 9002, 1_000_000)
    assert sent == received
