"""The overlay as an operator sees it: a relay, a public node, a node behind NAT and a node
with no inbound path at all, in network namespaces with real TUN devices and real NAT."""

import json
import os
import signal
import subprocess
import sys
import time

from tests.lab import wait_for
from tests.lab.overlay import transfer

NODES = ("public", "natted", "hidden")


def ip_json(ov, node, *args):
    return json.loads(ov.lab.nsexec(ov.nodes[node].ns, "ip", "-j", *args).stdout or "[]")


def test_every_node_pings_every_other(overlay):
    for src in NODES:
        for dst in NODES:
            if src != dst:
                r = overlay.ping(src, overlay.address(dst), count=3)
                assert r.returncode == 0, f"{src} -> {dst}: {r.stdout.decode()}{r.stderr.decode()}"
                assert " 0% packet loss" in r.stdout.decode()


def test_full_size_packets_pass_unfragmented_both_ways(overlay):
    """A packet of exactly the interface MTU, with DF set, arrives: the MTU is right, not guessed."""
    for src in NODES:
        mtu = overlay.node_status(src)["mtu"]
        assert mtu == 1500 - 28 - 40  # underlay 1500, IPv4+UDP, relayed header, data header, tag
        for dst in NODES:
            if src != dst:
                r = overlay.ping(src, overlay.address(dst), count=2, size=mtu - 28)
                assert r.returncode == 0, f"{src} -> {dst} at {mtu}: {r.stdout.decode()}{r.stderr.decode()}"
                too_big = overlay.ping(src, overlay.address(dst), count=1, size=mtu - 27)
                assert too_big.returncode != 0  # one byte more does not fit the interface


def test_interface_address_and_routes(overlay):
    seen = set()
    for node in NODES:
        st = overlay.node_status(node)
        (link,) = ip_json(overlay, node, "addr", "show", "dev", "tunneld0")
        assert "UP" in link["flags"] and link["mtu"] == st["mtu"]
        v4 = [a for a in link["addr_info"] if a["family"] == "inet"]
        assert [(a["local"], a["prefixlen"]) for a in v4] == [(st["address"], 32)]
        assert v4[0]["scope"] == "global"  # kubelet's --node-ip check wants a global address on a local link
        # IPv6: the overlay address alone, no link-local (tests/integration/test_ipv6.py)
        assert [a["local"] for a in link["addr_info"] if a["family"] == "inet6"] == [st["address6"]]
        # one route per peer, never the overlay's whole range (tests/integration/test_cloud.py)
        routes = sorted(r["dst"] for r in ip_json(overlay, node, "route", "show", "dev", "tunneld0"))
        assert routes == sorted(p["address"] for p in st["peers"])
        seen.add(st["address"])
    assert len(seen) == 3


def test_the_route_to_the_relay_never_uses_the_overlay(overlay):
    for node in NODES:
        (route,) = ip_json(overlay, node, "route", "get", overlay.relay.address)
        assert route["dev"] == "eth0", route


def test_megabytes_to_the_kubelet_port_of_the_node_with_no_inbound(overlay):
    sent, received = transfer(overlay, "public", "hidden", 10250, 16_000_000)
    assert sent == received and sent.startswith("16000000 ")
    sent, received = transfer(overlay, "natted", "hidden", 10250, 4_000_000)
    assert sent == received
    sent, received = transfer(overlay, "hidden", "natted", 10251, 4_000_000)
    assert sent == received


def test_status_json_has_the_documented_shape(overlay):
    out = overlay.lab.nsexec(overlay.nodes["hidden"].ns, sys.executable, "-m", "tunneld", "status", "--json",
                             "--state-dir", overlay.nodes["hidden"].state_dir)
    st = json.loads(out.stdout)
    assert st["role"] == "node" and st["name"] == "hidden" and st["interface"] == "tunneld0"
    assert st["address"].startswith("100.") and st["mtu"] == 1432
    assert st["relay"]["endpoint"] == overlay.relay_endpoint and st["relay"]["connected"] is True
    assert isinstance(st["relay"]["rtt_ms"], float) and 0 < st["relay"]["rtt_ms"] < 1000
    assert sorted(p["name"] for p in st["peers"]) == ["natted", "public"]
    for p in st["peers"]:
        assert set(p) >= {"name", "address", "path", "endpoint", "rtt_ms", "rx_bytes", "tx_bytes"}
        assert p["path"] in ("relay", "direct")
        if p["path"] == "relay":
            assert p["endpoint"] == overlay.relay_endpoint
        else:  # hidden's NAT lets nothing in, but what it sends out opens a way back
            assert p["endpoint"].split(":")[0] in ("198.51.100.11", "203.0.113.11")
    out = overlay.lab.nsexec(overlay.relay.ns, sys.executable, "-m", "tunneld", "status", "--json",
                             "--state-dir", overlay.relay.state_dir)
    rst = json.loads(out.stdout)
    assert rst["role"] == "relay" and rst["listen"] == overlay.relay_endpoint
    assert rst["network"] == "100.64.0.0/10"
    assert sorted(n["name"] for n in rst["nodes"]) == sorted(NODES)
    for n in rst["nodes"]:
        assert n["connected"] is True and set(n) >= {"name", "address", "connected", "endpoint"}
    hidden = next(n for n in rst["nodes"] if n["name"] == "hidden")
    assert hidden["endpoint"].startswith("203.0.113.")  # the relay sees the NAT's address


def test_status_table_is_readable(overlay):
    out = overlay.lab.nsexec(overlay.nodes["natted"].ns, sys.executable, "-m", "tunneld", "status",
                             "--state-dir", overlay.nodes["natted"].state_dir).stdout.decode()
    assert "node natted 100." in out and "connected over UDP" in out
    assert "public" in out and "hidden" in out and "relay" in out


def test_the_relay_forwards_only_ciphertext(overlay):
    """tcpdump on the relay's link while a marker crosses it: the marker never shows in clear."""
    lab = overlay.lab
    # natted (port-restricted cone) and hidden (random ports, no inbound) can never go direct:
    # their traffic must cross the relay.
    assert overlay.ping("natted", overlay.address("hidden")).returncode == 0
    assert next(p for p in overlay.node_status("natted")["peers"] if p["name"] == "hidden")["path"] == "relay"
    pcap = os.path.join(lab.tmp, "relay.pcap")
    dump = lab.spawn(overlay.relay.ns, "tcpdump", "-i", "eth0", "-U", "-w", pcap, "udp", "port", "7000")
    try:
        wait_for(lambda: os.path.exists(pcap), 10, what="tcpdump")
        time.sleep(0.5)
        marker = b"KUBELET-SECRET-" + os.urandom(8).hex().encode()
        dst = overlay.address("hidden")
        listener = subprocess.Popen(["ip", "netns", "exec", overlay.nodes["hidden"].ns, sys.executable, "-c",
                                     "import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                                     f"s.bind(('{dst}',8472));s.settimeout(10);print(s.recv(2000).decode(),flush=True)"],
                                    stdout=subprocess.PIPE)
        lab.processes.append(listener)
        time.sleep(0.5)
        for _ in range(3):
            lab.nsexec(overlay.nodes["natted"].ns, sys.executable, "-c",
                       f"import socket;socket.socket(socket.AF_INET,socket.SOCK_DGRAM).sendto({marker!r},('{dst}',8472))")
            time.sleep(0.2)
        got = listener.communicate(timeout=15)[0].strip()
        assert got == marker  # it did cross the relay...
        # Control: the same capture does see what is sent to the relay's port in clear.
        control = b"IN-CLEAR-" + os.urandom(8).hex().encode()
        lab.nsexec(overlay.nodes["public"].ns, sys.executable, "-c",
                   f"import socket;socket.socket(socket.AF_INET,socket.SOCK_DGRAM)"
                   f".sendto({control!r},('{overlay.relay.address}',7000))")

        def capture():
            with open(pcap, "rb") as f:
                return f.read()
        # tcpdump -U writes each packet as it sees it; on a busy machine that can take a moment.
        wait_for(lambda: control in capture(), 20, what="tcpdump to record the control marker")
    finally:
        lab.stop(dump, sig=signal.SIGINT)
    captured = capture()
    assert control in captured  # tcpdump saw the relay's traffic...
    assert marker not in captured  # ...but never the marker, which crossed it encrypted


def test_garbage_from_a_stranger_is_dropped_and_counted(overlay):
    """30,000 random datagrams (a third with a plausible type byte) and 300 TCP connections of
    random bytes, while two nodes ping each other through the relay."""
    import re
    import threading
    lab = overlay.lab
    stranger = lab.public_host("stranger")
    pid = overlay.relay_proc.pid

    def rss_kb():
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))

    before, rss_before = overlay.status(overlay.relay)["drops"], rss_kb()
    script = f"""
import os, random, socket
rng = random.Random(1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(30000):
    data = os.urandom(rng.randrange(0, 1400))
    if data and i % 3 == 0:
        data = bytes([rng.choice((1, 2, 3, 4, 5, 6))]) + data[1:]
    u.sendto(data, ("{overlay.relay.address}", 7000))
for i in range(300):
    t = socket.create_connection(("{overlay.relay.address}", 7000), timeout=5)
    t.sendall(os.urandom(rng.randrange(1, 5000)))
    t.close()
"""
    pings = {}
    pinger = threading.Thread(target=lambda: pings.update(r=overlay.lab.nsexec(
        overlay.nodes["natted"].ns, "ping", "-n", "-q", "-c", "60", "-i", "0.1", "-W", "2",
        overlay.address("hidden"), check=False, timeout=60)), daemon=True)
    pinger.start()
    lab.nsexec(stranger.ns, sys.executable, "-c", script, timeout=120)
    pinger.join(60)
    assert overlay.relay_proc.poll() is None
    # Every datagram is a drop, and so is every connection: each broke the framing, left a
    # frame unfinished, or carried messages dropped like datagrams. (A busy kernel may drop a
    # few hundred datagrams before the relay reads them.)
    after = wait_for(lambda: (d := overlay.status(overlay.relay)["drops"]) and
                     sum(d.values()) - sum(before.values()) >= 29300 and d, 30, what="drops to be counted")
    assert after.get("tcp_truncated_frame", 0) + after.get("tcp_bad_framing", 0) - \
        before.get("tcp_truncated_frame", 0) - before.get("tcp_bad_framing", 0) >= 250
    assert after.get("internal_error", 0) == 0
    # Every drop has its reason, and the reasons are the ones garbage earns.
    assert set(after) - {"empty", "bad_type", "relayed_unknown_source", "unknown_session", "handshake_wrong_key",
                         "handshake_malformed", "tcp_bad_framing", "tcp_truncated_frame",
                         "relayed_no_destination", "tcp_too_many_from_source"} <= set(before)
    grew = rss_kb() - rss_before
    print(f"garbage: relay RSS grew {grew} kB; drops {dict(after)}")
    assert grew < 100 * 1024
    # The nodes were served all along: the pings through the relay during the garbage all came back.
    m = re.search(rb"(\d+) packets transmitted, (\d+) received", pings["r"].stdout)
    assert m and int(m.group(2)) >= 0.95 * int(m.group(1)), pings["r"].stdout
    for src, dst in (("public", "hidden"), ("hidden", "natted")):
        assert overlay.ping(src, overlay.address(dst), count=2).returncode == 0
    assert all(n["connected"] for n in overlay.status(overlay.relay)["nodes"])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_idle_costs_nothing(overlay):
    """After traffic, nothing keeps running: each daemon stays under 1% of a core over five
    quiet seconds (the keepalives and pings of an idle overlay)."""
    r = overlay.lab.nsexec(overlay.nodes["public"].ns, "ping", "-n", "-q", "-c", "20", "-i", "0.01",
                           overlay.address("natted"), check=False, timeout=30)
    assert r.returncode == 0
    time.sleep(1.0)
    procs = {n: overlay.node_procs[n].pid for n in NODES}
    procs["relay"] = overlay.relay_proc.pid
    start = {n: cpu_seconds(pid) for n, pid in procs.items()}
    time.sleep(5.0)
    used = {n: cpu_seconds(pid) - start[n] for n, pid in procs.items()}
    assert all(u < 0.05 for u in used.values()), used
