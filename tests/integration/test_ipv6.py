"""IPv6 inside the overlay, as an operator of a dual-stack cluster sees it: every node gets an
IPv6 overlay address next to its IPv4 one, and IPv6 pings, TCP, full-size packets and
flannel's IPv6 VXLAN cross the tunnel, in the seeds' topology (a relay, a public node, a node
behind NAT, a node with no inbound)."""

import ipaddress
import json
import sys

from tests.lab import Lab, wait_for
from tests.lab.overlay import NETWORK6, Overlay, transfer_between

NODES = ("public", "natted", "hidden")


def address6(ov, name):
    return ov.node_status(name)["address6"]


def ping6(ov, src, dst6, count=3, size=None, source=None):
    cmd = ["ping", "-6", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2"]
    if size is not None:
        cmd += ["-s", str(size), "-M", "do"]
    if source is not None:
        cmd += ["-I", source]
    return ov.lab.nsexec(ov.nodes[src].ns, *cmd, dst6, check=False, timeout=30)


def test_every_node_has_an_ipv6_overlay_address_that_carries_its_ipv4_one(overlay):
    prefix = ipaddress.IPv6Network(NETWORK6)
    for name in NODES:
        st = overlay.node_status(name)
        assert st["network6"] == NETWORK6
        assert ipaddress.IPv6Address(st["address6"]) == prefix.network_address + int(ipaddress.IPv4Address(st["address"]))
        (link,) = json.loads(overlay.lab.nsexec(overlay.nodes[name].ns, "ip", "-j", "addr", "show", "dev",
                                                "tunneld0").stdout)
        v6 = [(a["local"], a["prefixlen"], a["scope"]) for a in link["addr_info"] if a["family"] == "inet6"]
        assert v6 == [(st["address6"], 64, "global")]  # no link-local: nothing but overlay packets leave by it
        assert {p["name"]: p["address6"] for p in st["peers"]} == {p: address6(overlay, p) for p in NODES if p != name}
    relay = overlay.status(overlay.relay)
    assert relay["network6"] == NETWORK6
    text = overlay.lab.nsexec(overlay.nodes["hidden"].ns, sys.executable, "-m", "tunneld", "status", "--state-dir",
                              overlay.nodes["hidden"].state_dir).stdout.decode()
    st = overlay.node_status("hidden")
    assert f"node hidden {st['address']} {st['address6']} on tunneld0" in text, text


def test_every_node_pings_every_other_over_ipv6(overlay):
    for src in NODES:
        for dst in NODES:
            if src != dst:
                r = ping6(overlay, src, address6(overlay, dst))
                assert r.returncode == 0 and " 0% packet loss" in r.stdout.decode(), \
                    f"{src} -> {dst}: {r.stdout.decode()}{r.stderr.decode()}"


def test_full_size_ipv6_packets_pass_unfragmented(overlay):
    """An IPv6 packet of exactly tunneld0's MTU arrives whole; one byte more does not leave."""
    for src, dst in (("public", "hidden"), ("hidden", "natted")):
        mtu = overlay.node_status(src)["mtu"]
        r = ping6(overlay, src, address6(overlay, dst), count=2, size=mtu - 48)  # 40 IPv6 + 8 ICMPv6
        assert r.returncode == 0, f"{src} -> {dst} at {mtu}: {r.stdout.decode()}{r.stderr.decode()}"
        assert ping6(overlay, src, address6(overlay, dst), count=1, size=mtu - 47).returncode != 0


def test_20_mb_over_ipv6_tcp_arrive_byte_exact(overlay):
    sent, received = transfer_between(overlay.lab, overlay.nodes["public"].ns, overlay.nodes["hidden"].ns,
                                      address6(overlay, "hidden"), 10250, 20_000_000)
    assert sent == received and sent.startswith("20000000 ")
    sent, received = transfer_between(overlay.lab, overlay.nodes["hidden"].ns, overlay.nodes["natted"].ns,
                                      address6(overlay, "natted"), 10251, 4_000_000)
    assert sent == received and sent.startswith("4000000 ")


def test_a_node_cannot_send_from_another_nodes_ipv6_address(overlay):
    ov = overlay
    victim, src, dst = address6(ov, "public"), "natted", "hidden"
    ns = ov.nodes[src].ns
    before = ov.node_status(dst)["drops"].get("spoofed_source", 0)
    ov.lab.nsexec(ns, "ip", "addr", "add", f"{victim}/128", "dev", "tunneld0", "nodad")
    try:
        r = ping6(ov, src, address6(ov, dst), source=victim)
    finally:
        ov.lab.nsexec(ns, "ip", "addr", "del", f"{victim}/128", "dev", "tunneld0")
    assert r.returncode != 0  # not one answer
    assert ov.node_status(dst)["drops"].get("spoofed_source", 0) - before >= 3
    assert ping6(ov, src, address6(ov, dst), count=2).returncode == 0


def test_kube_env_gives_kubelet_a_dual_stack_node_ip_it_accepts(overlay):
    from tunneld.kube import node_ip_problem
    ns, node = overlay.nodes["natted"].ns, overlay.node_status("natted")
    out = overlay.lab.nsexec(ns, sys.executable, "-m", "tunneld", "kube-env", "--state-dir",
                             overlay.nodes["natted"].state_dir).stdout.decode()
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line and not line.startswith("#"))
    assert env["KUBELET_EXTRA_ARGS"] == f"'--node-ip={node['address']},{node['address6']}'"
    assert env["TUNNELD_NODE_IP6"] == f"'{node['address6']}'"
    assert env["FLANNEL_MTU6"] == f"'{node['mtu'] - 70}'"
    local = [a["local"] for link in json.loads(overlay.lab.nsexec(ns, "ip", "-j", "addr").stdout)
             for a in link["addr_info"]]
    for ip in env["KUBELET_EXTRA_ARGS"].strip("'").removeprefix("--node-ip=").split(","):
        assert node_ip_problem(ip, local) is None  # kubelet's own checks, on this node's addresses
    conf = json.loads(overlay.lab.nsexec(ns, sys.executable, "-m", "tunneld", "kube-env", "--net-conf", "vxlan",
                                         "--cluster-cidr6", "2001:db8:4400::/56").stdout)
    assert conf["EnableIPv6"] is True and conf["IPv6Network"] == "2001:db8:4400::/56"


def test_flannel_ipv6_vxlan_over_tunneld0_carries_pod_traffic(overlay):
    """What flanneld's dual-stack vxlan backend builds for IPv6 (flannel-v6.1 over tunneld0's IPv6
    address, MTU 70 below tunneld0's), between two nodes: pods ping and stream to each other."""
    from tests.lab import flannel
    try:
        pods = flannel.setup6(overlay.lab, overlay, ["public", "hidden"])
        a, b = pods["public"], pods["hidden"]
        r = overlay.lab.nsexec(a.ns, "ping", "-6", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", b.ip, check=False)
        assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
        full = overlay.lab.nsexec(a.ns, "ping", "-6", "-n", "-q", "-c", "2", "-W", "2", "-M", "do", "-s",
                                  str(a.mtu - 48), b.ip, check=False)
        assert full.returncode == 0, full.stdout.decode()  # a full-size pod packet, whole
        sent, received = transfer_between(overlay.lab, a.ns, b.ns, b.ip, 8080, 8_000_000)
        assert sent == received and sent.startswith("8000000 ")
    finally:
        flannel.teardown6(overlay.lab, overlay, ["public", "hidden"])


def test_the_network6_is_kept_and_a_different_one_is_refused():
    """Without --network6 a relay picks a random unique local /64 once and keeps it; another
    --network6 for a network with nodes is refused with one line, and nothing changes."""
    lab = Lab()
    try:
        ov = Overlay(lab)
        ov.start_relay(network6=None)
        chosen = ov.status(ov.relay)["network6"]
        net = ipaddress.IPv6Network(chosen)
        assert net.prefixlen == 64 and net.subnet_of(ipaddress.IPv6Network("fd00::/8"))
        ov.join(lab.public_host("one"), "one", ov.token())
        ov.wait_connected()
        assert ov.node_status("one")["network6"] == chosen
        ov.stop_relay()
        ov.start_relay(network6=None)
        assert ov.status(ov.relay)["network6"] == chosen
        ov.stop_relay()
        for given, says in ((NETWORK6, f"--network6 {chosen}"), ("fe80::/64", "reserved")):
            r = lab.nsexec(ov.relay.ns, sys.executable, "-m", "tunneld", "serve", "--listen", ov.relay_endpoint,
                           "--state-dir", ov.relay.state_dir, "--network6", given, check=False, timeout=20)
            err = r.stderr.decode().strip()
            assert r.returncode == 2 and len(err.splitlines()) == 1 and says in err, err
        ov.start_relay(network6=None)  # nothing changed
        assert ov.status(ov.relay)["network6"] == chosen
    finally:
        lab.close()


def test_an_ipv6_prefix_behind_a_gateway_is_reached_once_approved():
    """A node advertises an IPv6 LAN (2001:db8:70::/64) behind it; once the operator approves
    it on the relay, a node that accepts routes reaches the LAN's host over overlay IPv6,
    routed (never masqueraded): the LAN host sees the overlay address and answers it."""
    lab = Lab()
    try:
        ov = Overlay(lab)
        ov.start_relay()
        token = ov.token()
        gw, client = lab.public_host("gw6"), lab.public_host("cl6")
        lan = lab.add_namespace("gw6lan")
        lab.veth(gw.ns, "lan0", lan, "eth0")
        lab.addr6(gw.ns, "lan0", "2001:db8:70::1/64")
        lab.addr6(lan, "eth0", "2001:db8:70::2/64")
        lab.run("ip", "-n", lan, "-6", "route", "add", "default", "via", "2001:db8:70::1")
        ov.join(gw, "gw6", token, "--advertise-routes", "2001:db8:70::/64")
        ov.join(client, "cl6", token, "--accept-routes")
        ov.wait_connected()
        assert ping6(ov, "cl6", "2001:db8:70::2", count=1).returncode != 0  # not approved yet
        r = ov.approve("gw6", "2001:db8:70::/64")
        assert r.returncode == 0, r.stderr.decode()
        wait_for(lambda: ov.node_status("cl6")["accepted_routes"] == ["2001:db8:70::/64"], 20,
                 what="the client to accept the IPv6 prefix")
        routes = json.loads(lab.nsexec(client.ns, "ip", "-j", "-6", "route", "show", "dev", "tunneld0").stdout)
        assert "2001:db8:70::/64" in [x["dst"] for x in routes]
        r = ping6(ov, "cl6", "2001:db8:70::2")
        assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
        sent, received = transfer_between(lab, client.ns, lan, "2001:db8:70::2", 7300, 4_000_000)
        assert sent == received and sent.startswith("4000000 ")
        # routed, not masqueraded: the LAN host reaches the client's own overlay address too
        r = lab.nsexec(lan, "ping", "-6", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2",
                       ov.node_status("cl6")["address6"], check=False)
        assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    finally:
        lab.close()
