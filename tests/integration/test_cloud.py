"""The overlay takes nothing of the host's. On clouds whose own services live inside
100.64.0.0/10 (Alibaba Cloud: DNS 100.100.2.136 and .138, mirrors 100.100.2.148, metadata
100.100.100.200), a node on the default network must still reach them through its own
network, not into tunneld0; and a node that already has an address, a route or a resolver
inside the overlay's network refuses it, naming what it found."""

import os
import shutil

import pytest

from tests.lab import wait_for
from tests.lab.overlay import Overlay

CLOUD = ("100.100.2.136", "100.100.2.138", "100.100.2.148", "100.100.100.200")


def route_dev(lab, ns, address) -> str:
    out = lab.nsexec(ns, "ip", "-o", "route", "get", address).stdout.decode()
    return out.split(" dev ")[1].split()[0]


def test_the_clouds_own_services_in_the_overlay_range_stay_reachable(lab):
    inet = lab.internet()  # the cloud's services, behind every host's default route
    for address in CLOUD:
        lab.nsexec(inet, "ip", "addr", "add", f"{address}/32", "dev", "lo")
    ov = Overlay(lab)
    ov.start_relay()
    token = ov.token()
    ov.join(lab.public_host("alpha"), "alpha", token)
    ov.join(lab.nat_host("bravo", "no-inbound"), "bravo", token)
    ov.wait_connected()
    for name in ("alpha", "bravo"):
        ns = ov.nodes[name].ns
        for address in CLOUD:
            assert route_dev(lab, ns, address) == "eth0", (name, address)
            assert lab.nsexec(ns, "ping", "-n", "-c", "1", "-W", "2", address, check=False).returncode == 0
        # the overlay's own addresses still go into the tunnel, and only those
        peer = ov.address("bravo" if name == "alpha" else "alpha")
        assert route_dev(lab, ns, peer) == "tunneld0"
        assert route_dev(lab, ns, "100.64.200.200") != "tunneld0"  # nobody's: not ours to take
    assert ov.ping("alpha", ov.address("bravo")).returncode == 0
    # no address is handed out in the cloud's service ranges
    assert not [n for n in ov.status(ov.relay)["nodes"] if n["address"].startswith(("100.100.", "100.115.92."))]


@pytest.mark.parametrize("claim", ["address", "route", "resolver"])
def test_a_network_that_overlaps_what_the_host_has_is_refused_by_name(lab, claim):
    ov = Overlay(lab)
    ov.start_relay()
    host = lab.public_host("edge")
    netns_etc = f"/etc/netns/{host.ns}"
    try:
        if claim == "address":
            lab.nsexec(host.ns, "ip", "addr", "add", "100.64.77.1/24", "dev", "eth0")
            what = "100.64.77.1"
        elif claim == "route":
            lab.nsexec(host.ns, "ip", "route", "add", "100.65.0.0/16", "via", "198.51.100.254")
            what = "100.65.0.0/16"
        else:  # `ip netns exec` shows the namespace this resolv.conf
            os.makedirs(netns_etc, exist_ok=True)
            with open(f"{netns_etc}/resolv.conf", "w") as f:
                f.write("nameserver 100.64.53.53\n")
            what = "100.64.53.53"
        proc = ov.join(host, "edge", ov.token())
        proc.wait(30)
        assert proc.returncode == 2, lab.log("edge")
        last = lab.log("edge").strip().splitlines()[-1]
        assert last.startswith("tunneld: ") and what in last and "100.64.0.0/10" in last and "--network" in last
        assert wait_for(lambda: not lab.nsexec(host.ns, "ip", "-o", "addr", "show", "dev", "tunneld0",
                                               check=False).stdout.strip(), 5, what="no overlay address")
    finally:
        shutil.rmtree(netns_etc, ignore_errors=True)
