"""IPv6 under the overlay: a relay on IPv4 and IPv6; node "six" with an IPv6-only uplink (no
IPv4 address at all outside the overlay), "four" IPv4-only, "dual" dual-stack (joining by a
name with both kinds of address), and "natsix" behind an IPv4 NAT that lets nothing in, with
a public IPv6 address; "sixtcp", IPv6 alone on a network that drops UDP. The relay runs a
worker beside its own process (it forwards IPv4 to IPv4; its own process the rest). Real
sockets of both families in the namespace lab (2001:db8::/32)."""

import os
import shutil
import sys

import pytest

from tests.lab import Lab, wait_for
from tests.lab.overlay import Overlay, transfer_between
from tunneld.proto import endpoint


def hosts_file(lab, ns: str, text: str) -> str:
    """/etc/netns/NS/hosts: what `ip netns exec` shows that namespace as /etc/hosts."""
    path = os.path.join("/etc/netns", ns)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "hosts"), "w") as f:
        f.write(text)
    return path


@pytest.fixture(scope="module")
def six():
    lab = Lab()
    made = []
    try:
        ov = Overlay(lab, relay_ipv6=True)
        ov.start_relay("--workers", "2")
        token = ov.token("--ttl", "1h")
        ov.join(lab.public_host("six", ipv4=False), "six", token, relay=ov.relay_endpoint6)
        ov.join(lab.public_host("four"), "four", token)
        dual = lab.public_host("dual", ipv6=True)
        made.append(hosts_file(lab, dual.ns, f"127.0.0.1 localhost\n{ov.relay.address} relay.test\n"
                                             f"{ov.relay.address6} relay.test\n"))
        ov.join(dual, "dual", token, relay=f"relay.test:{ov.port}")
        ov.join(lab.nat_host("natsix", "no-inbound", ipv6=True), "natsix", token)
        sixtcp = lab.public_host("sixtcp", ipv4=False)
        for chain in ("INPUT", "OUTPUT"):
            lab.nsexec(sixtcp.ns, "ip6tables", "-w", "5", "-A", chain, "-p", "udp", "-j", "DROP")
        ov.join(sixtcp, "sixtcp", token, relay=ov.relay_endpoint6)
        ov.wait_connected(timeout=60)
        yield ov
    finally:
        lab.close()
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


def peer(ov, src, dst):
    return next(p for p in ov.node_status(src)["peers"] if p["name"] == dst)


def test_a_node_with_ipv6_alone_joins_over_ipv6(six):
    st = six.node_status("six")
    assert st["relay"]["connected"] and st["relay"]["endpoint"] == six.relay_endpoint6
    seen = {n["name"]: n["endpoint"] for n in six.status(six.relay)["nodes"]}
    assert seen["six"].startswith(f"[{six.nodes['six'].address6}]:"), seen
    assert not seen["four"].startswith("["), seen
    text = six.lab.nsexec(six.nodes["six"].ns, sys.executable, "-m", "tunneld", "metrics", "--state-dir",
                          six.nodes["six"].state_dir).stdout.decode()
    assert f'tunneld_relay_connected{{relay="{six.relay_endpoint6}",transport="udp"}} 1.0' in text, text[:2000]
    # no IPv4 outside the overlay: the host has none
    assert "inet " not in six.lab.nsexec(six.nodes["six"].ns, "ip", "-4", "addr", "show", "dev", "eth0").stdout.decode()


def test_a_node_whose_ipv6_network_drops_udp_uses_tcp_over_ipv6(six):
    relay = six.node_status("sixtcp")["relay"]
    assert relay["transport"] == "tcp" and relay["endpoint"] == six.relay_endpoint6, relay
    for dst in ("four", "six"):
        r = six.ping("sixtcp", six.address(dst), count=3)
        assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()


def test_a_relay_name_with_both_families_is_tried_ipv6_first(six):
    relay = six.node_status("dual")["relay"]
    assert relay["endpoint"] == six.relay_endpoint6 and six.relay_endpoint in relay["relays"], relay


def test_nodes_of_different_families_talk_through_the_relay_which_bridges_them(six):
    for src, dst in (("six", "four"), ("four", "six")):
        r = six.ping(src, six.address(dst), count=3)
        assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
        assert peer(six, src, dst)["path"] == "relay"
    sent, received = transfer_between(six.lab, six.nodes["four"].ns, six.nodes["six"].ns, six.address("six"),
                                      7100, 4_000_000)
    assert sent == received and sent.startswith("4000000 ")


@pytest.mark.parametrize("a, b, prefix", [("six", "dual", "[2001:db8:0:2::"), ("dual", "natsix", "[2001:db8:1:")])
def test_pairs_with_ipv6_go_direct_over_ipv6(six, a, b, prefix):
    """natsix's IPv4 NAT lets nothing in, and dual has both: IPv6 is the direct path."""
    six.ping(a, six.address(b), count=2)
    wait_for(lambda: peer(six, a, b)["path"] == "direct" and peer(six, b, a)["path"] == "direct", 30,
             what=f"{a} and {b} to go direct")
    here, there = peer(six, a, b), peer(six, b, a)
    assert here["endpoint"].startswith(prefix), here
    assert there["endpoint"].startswith("["), there
    sent, received = transfer_between(six.lab, six.nodes[a].ns, six.nodes[b].ns, six.address(b), 7200, 20_000_000)
    assert sent == received and sent.startswith("20000000 ")
    assert peer(six, a, b)["path"] == "direct"


def test_the_mtu_counts_the_ipv6_header_and_full_size_packets_pass(six):
    """The relay listens on IPv6, so every path may be IPv6: tunneld0's MTU is 20 bytes below
    an IPv4-only network's, and a full-size DF packet passes direct over IPv6 and relayed
    across families."""
    for name in ("six", "four", "dual", "natsix"):
        assert six.node_status(name)["mtu"] == 1500 - 40 - 8 - 40  # IPv6 and UDP headers, the tunnel's
    for src, dst in (("six", "dual"), ("six", "four"), ("natsix", "dual")):
        mtu = six.node_status(src)["mtu"]
        r = six.ping(src, six.address(dst), count=2, size=mtu - 28)
        assert r.returncode == 0, f"{src} -> {dst}: {r.stdout.decode()}{r.stderr.decode()}"


def test_ipv6_inside_over_ipv6_underneath(six):
    """The overlay's IPv6 on a direct IPv6 path: full-size DF packets, and 20 MB byte-exact."""
    six.ping("six", six.address("dual"), count=2)
    wait_for(lambda: peer(six, "six", "dual")["path"] == "direct", 30, what="six and dual to go direct")
    dual6 = six.node_status("dual")["address6"]
    mtu = six.node_status("six")["mtu"]
    r = six.lab.nsexec(six.nodes["six"].ns, "ping", "-6", "-n", "-q", "-c", "2", "-W", "2", "-M", "do", "-s",
                       str(mtu - 48), dual6, check=False)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    sent, received = transfer_between(six.lab, six.nodes["six"].ns, six.nodes["dual"].ns, dual6, 7400, 20_000_000)
    assert sent == received and sent.startswith("20000000 ")
    assert peer(six, "six", "dual")["path"] == "direct"


def test_a_direct_ipv6_path_takes_the_workers(six):
    """Four streams over a direct IPv6 path spread over both nodes' workers (each has one
    beside its own process, each with an IPv6 socket of the node's port), byte-exact."""
    from tests.integration.test_faults import in_background
    six.ping("six", six.address("dual"), count=2)
    wait_for(lambda: peer(six, "six", "dual")["path"] == "direct", 30, what="six and dual to go direct")
    def carried(n):  # what each worker beside the node's own process received
        return {w["worker"]: w["rx_bytes"] for w in six.node_status(n)["workers"] if w["worker"]}

    before = {n: carried(n) for n in ("six", "dual")}
    assert all(len(b) == 1 for b in before.values()), before
    streams = [in_background(transfer_between, six.lab, six.nodes[a].ns, six.nodes[b].ns, six.address(b), 7500 + i,
                             4 << 20, 60) for i, (a, b) in enumerate([("six", "dual"), ("dual", "six")] * 2)]
    for result in streams:
        sent, received = result(90)
        assert sent == received and sent.startswith(str(4 << 20))

    wait_for(lambda: all(carried(n)[w] > before[n][w] for n in before for w in before[n]), 5,
             what="the worker of each node to receive over IPv6")


def test_every_endpoint_status_shows_parses_back(six):
    seen = [n["endpoint"] for n in six.status(six.relay)["nodes"]]
    for name in six.nodes:
        st = six.node_status(name)
        seen += [st["relay"]["endpoint"], *st["relay"]["relays"]]
        seen += [p["endpoint"] for p in st["peers"] if p["path"] == "direct"]
    assert any(s.startswith("[") for s in seen)
    assert any(s.startswith("tcp:[") for s in seen)  # sixtcp's stream, as the relay shows it
    for text in seen:
        udp = text.removeprefix("tcp:")  # a stream's label: "tcp:" and its peer's address
        assert endpoint.format(endpoint.parse(udp)) == udp, text


def test_the_relay_refuses_two_addresses_of_one_family_in_one_line(six):
    r = six.lab.nsexec(six.relay.ns, sys.executable, "-m", "tunneld", "serve", "--listen",
                       "192.0.2.1:7001,192.0.2.1:7002", "--state-dir", six.lab.tmp + "/other", check=False)
    err = r.stderr.decode().strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "two IPv4 addresses" in err, err
