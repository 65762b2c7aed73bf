"""Several relays of one network on a real three-member etcd cluster (Debian's etcd), in
namespaces: nodes behind NATs that cannot go direct, homed on different relays.

One lab for the module (etcd and relays take seconds to start); the tests run in order
and each leaves the network as it found it, or says what it changed."""

import json
import signal
import sys
import time

import pytest

from tests.lab import Lab, LabError, wait_for
from tests.lab.overlay import transfer_between
from tests.lab.relays import Etcd, Relays, dump
from tests.lab.services import ECHO, FETCH, MB20, SERVICE, UDP_CLIENT, expected


@pytest.fixture(scope="module")
def net():
    with Lab() as lab:
        etcd = Etcd(lab)
        etcd.start_all()
        r = Relays(lab, etcd, count=2)
        config = f"{lab.tmp}/relay.toml"
        with open(config, "w") as f:
            f.write('allow-ports = ["18000-18999"]\n')  # for publishing
        r.start(0, "--config", config)
        r.start(1, "--config", config)
        token = r.token(0, "--uses", "0")  # made on relay 1 ...
        r.join(lab.nat_host("alpha", "no-inbound"), "alpha", token, [0, 1])
        r.join(lab.nat_host("bravo", "no-inbound"), "bravo", token, [1, 0])  # ... used at relay 2
        try:
            r.wait_connected(["alpha", "bravo"])
        except LabError:
            print(dump(r))
            raise
        yield lab, etcd, r


def test_a_network_on_two_relays_carries_relayed_tcp_byte_exact(net):
    lab, etcd, r = net
    assert r.home("alpha") == r.endpoint(0) and r.home("bravo") == r.endpoint(1)
    st = r.node_status("alpha")
    assert set(st["relay"]["relays"]) == {r.endpoint(0), r.endpoint(1)}
    assert {p["name"]: p["path"] for p in st["peers"]} == {"bravo": "relay"}
    # Each relay knows where every node is homed, and that the other relay is up.
    for i in (0, 1):
        rs = r.status(i)
        homes = {n["name"]: n["home"] for n in rs["nodes"]}
        assert homes == {"alpha": r.endpoint(0), "bravo": r.endpoint(1)}, dump(r)
        assert [x["health"] for x in rs["relays"]] == ["up", "up"], dump(r)
    before = r.status(1)["counters"].get("mesh_forwarded", 0)
    sent, got = transfer_between(lab, r.nodes["alpha"].ns, r.nodes["bravo"].ns,
                                 r.node_status("bravo")["address"], 5001, 20 << 20)
    assert sent == got and sent.startswith(str(20 << 20))
    # relay 1 took alpha's datagrams and passed them over the mesh to relay 2, bravo's home
    assert r.status(1)["counters"].get("mesh_forwarded", 0) - before > 1000
    assert r.status(0)["counters"].get("mesh_forwarded", 0) > 100  # bravo's ACKs the other way


def test_a_relay_publishes_a_service_of_a_node_homed_on_another(net):
    """A client reaches bravo's services through relay 1, while bravo is homed on relay 2:
    relay 1 asks through relay 2, and bravo's work connection comes to relay 1."""
    lab, etcd, r = net
    assert r.home("bravo") == r.endpoint(1)
    address, ns = r.node_status("bravo")["address"], r.nodes["bravo"].ns
    services = [lab.spawn(ns, sys.executable, "-c", SERVICE, address, "8080", str(MB20), env={"PYTHONPATH": "."}),
                lab.spawn(ns, sys.executable, "-c", ECHO, address, "5353")]
    outside = lab.public_host("outside")
    try:
        wait_for(lambda: lab.nsexec(ns, "ss", "-Hltn", "sport = :8080").stdout.strip(), 10, what="the service")
        r.cli(0, "publish", "add", "web", "bravo:8080", "--remote-port", "18080")
        r.cli(0, "publish", "add", "echo", "bravo:5353", "--remote-port", "18053", "--udp")

        def published():
            rows = {x["name"]: x for x in r.status(0)["published"]}
            mine = {(x["name"], x["relay"]) for x in r.node_status("bravo").get("published", [])}
            return all(x["node_connected"] for x in rows.values()) and {("web", r.endpoint(0)),
                                                                          ("echo", r.endpoint(0))} <= mine
        wait_for(published, 20, what="relay 1 to publish bravo's services through relay 2")
        got = lab.nsexec(outside.ns, sys.executable, "-c", FETCH, r.hosts[0].address, "18080", timeout=60)
        assert got.stdout.decode().strip() == expected(MB20)
        echoed = lab.nsexec(outside.ns, sys.executable, "-c", UDP_CLIENT, r.hosts[0].address, "18053", "20")
        assert int(echoed.stdout) == 20
        assert r.home("bravo") == r.endpoint(1)  # it stayed where it was
        assert r.status(0)["published"][0]["errors"] == 0
    finally:
        for name in ("web", "echo"):
            r.cli(0, "publish", "remove", name, check=False)
        for proc in services:
            lab.stop(proc)


def test_the_relays_share_one_ipv6_prefix_and_carry_ipv6_routes_across(net):
    """Without --network6 the first relay chose a unique local /64 and the second took it from
    etcd; a member's IPv6 prefix, approved on relay 1, reaches a node homed on relay 2 (in
    the presence record's field of its own, beside the IPv4 one)."""
    lab, etcd, r = net
    (six,) = {r.status(i)["network6"] for i in (0, 1)} | {r.node_status(n)["network6"] for n in ("alpha", "bravo")}
    assert six.startswith("fd") and six.endswith("::/64")
    token = r.token(0, "--uses", "2")
    r.join(lab.public_host("gw6"), "gw6", token, [0, 1], "--advertise-routes", "198.18.91.0/24,2001:db8:91::/64")
    r.join(lab.public_host("cl6"), "cl6", token, [1, 0], "--accept-routes")
    try:
        r.wait_connected(["gw6", "cl6"])
        for prefix in ("198.18.91.0/24", "2001:db8:91::/64"):
            r.cli(0, "routes", "approve", "gw6", prefix)
        wait_for(lambda: r.node_status("cl6")["accepted_routes"] == ["198.18.91.0/24", "2001:db8:91::/64"], 20,
                 what="the node on relay 2 to accept both of gw6's prefixes")
        assert r.home("gw6") == r.endpoint(0) and r.home("cl6") == r.endpoint(1)
    finally:
        for name in ("gw6", "cl6"):
            proc = r.node_procs.pop(name, None)
            if proc is not None:
                lab.stop(proc)


def test_fifty_nodes_joining_at_two_relays_at_once_get_fifty_addresses(net):
    lab, etcd, r = net
    token = r.token(0, "--uses", "50")
    host = lab.public_host("crowd")
    out = lab.nsexec(host.ns, sys.executable, "-c", CROWD, token, r.endpoint(0), r.endpoint(1), "50",
                     timeout=120).stdout.decode()
    addresses = json.loads(out)
    assert len(addresses) == 50 and len(set(addresses)) == 50, out
    # Both relays agree on who holds which address, and the token is used up everywhere.
    for i in (0, 1):
        held = {n["name"]: n["address"] for n in r.status(i)["nodes"] if n["name"].startswith("crowd")}
        assert sorted(held.values()) == sorted(addresses)
    tokens = r.control(1, {"cmd": "tokens"})["tokens"]
    assert [t["uses"] for t in tokens if t["max_uses"] == 50] == [50]
    for n in range(50):  # leave the network as it was
        r.cli(n % 2, "revoke", f"crowd{n}")


def test_a_revoke_at_relay2_ends_a_node_homed_on_relay1(net):
    lab, etcd, r = net
    host = lab.nat_host("charlie", "no-inbound")
    proc = r.join(host, "charlie", r.token(1), [0, 1])
    r.wait_connected(["charlie", "alpha"])
    assert r.home("charlie") == r.endpoint(0)
    start = time.monotonic()
    r.cli(1, "revoke", "charlie")
    code = proc.wait(10)
    assert time.monotonic() - start < 2.0
    assert code == 3 and "revoked" in lab.log("charlie")
    wait_for(lambda: "charlie" not in {p["name"] for p in r.node_status("alpha")["peers"]}, 5,
             what="alpha to forget charlie")


def test_one_etcd_member_lost_changes_nothing(net):
    lab, etcd, r = net
    lost = etcd.leader()  # the worst one to lose: the others elect a new leader while we ask
    etcd.stop(lost, signal.SIGKILL)
    try:
        token = r.token(1)  # at once: while the others notice and elect
        host = lab.nat_host("delta", "no-inbound")
        r.join(host, "delta", token, [1, 0])
        r.wait_connected(["delta", "alpha", "bravo"])
        assert r.ping("delta", r.node_status("alpha")["address"]).returncode == 0
        assert all(r.status(i)["store"]["problem"] is None for i in (0, 1))
    finally:
        etcd.start(lost, state="existing")
        etcd.wait_healthy()


def test_without_etcd_traffic_flows_joins_wait_with_a_reason_and_then_get_in(net):
    lab, etcd, r = net
    token = r.token(1)  # made while etcd answers, used while it does not
    for i in list(etcd.procs):
        etcd.stop(i)
    try:
        wait_for(lambda: all(r.status(i)["store"]["problem"] for i in (0, 1)), 10, what="relays to notice")
        assert r.ping("alpha", r.node_status("bravo")["address"]).returncode == 0
        refused = r.cli(0, "token", check=False)
        assert refused.returncode != 0 and b"store" in refused.stderr
        host = lab.nat_host("echo", "no-inbound")
        r.join(host, "echo", token, [0, 1])
        wait_for(lambda: "store" in (r.node_status("echo")["relay"]["problem"] or ""), 20,
                 what="the node to say why it waits")
    finally:
        for i in range(3):
            etcd.start(i, state="existing")
        etcd.wait_healthy()
    wait_for(lambda: not any(r.status(i)["store"]["problem"] for i in (0, 1)), 20, what="relays to recover")
    r.wait_connected(["echo", "alpha", "bravo"], timeout=60)


def test_killing_the_home_relay_mid_stream_loses_nothing_and_stalls_under_3_s(net):
    lab, etcd, r = net
    # alpha sends 40 MB to bravo; bravo's home (relay 2) is killed in the middle of it
    dst = r.node_status("bravo")["address"]
    sink = lab.spawn(r.nodes["bravo"].ns, sys.executable, "-c", GAP_SINK, dst, "5002", "90",
                     log=f"{lab.tmp}/gapsink.out")
    time.sleep(1.0)
    source = lab.spawn(r.nodes["alpha"].ns, sys.executable, "-c", PACED, dst, "5002", str(40 << 20), str(8 << 20),
                       log=f"{lab.tmp}/gapsource.out")
    time.sleep(2.0)
    killed_at = time.time()
    r.stop(1, signal.SIGKILL)
    try:
        assert source.wait(90) == 0 and sink.wait(90) == 0, open(f"{lab.tmp}/gapsource.out").read()
        sent = open(f"{lab.tmp}/gapsource.out").read().split()
        got = open(f"{lab.tmp}/gapsink.out").read().split()
        assert got[:2] == sent[:2], (sent, got)  # byte-exact
        gap, gap_end = float(got[2]), float(got[3])
        print(f"longest stall {gap:.2f} s, ending {gap_end - killed_at:.2f} s after the kill")
        assert gap < 3.0 and gap_end - killed_at < 3.0, dump(r)
        assert r.home("bravo") == r.endpoint(0)
        assert r.node_status("bravo")["counters"].get("relay_failovers", 0) >= 1
    finally:
        r.start(1)
    wait_for(lambda: [x["health"] for x in r.status(0)["relays"]] == ["up", "up"], 15, what="relay 2 back")


def test_a_relay_added_later_is_learned_and_used(net):
    lab, etcd, r = net
    i = r.add_relay()
    # Without a copy of the network's key it refuses to start, with one line saying so.
    proc = lab.tunneld(r.hosts[i], "serve", "--listen", r.endpoint(i), "--store", etcd.url, "--state-dir",
                       r.hosts[i].state_dir, log_name="nokey")
    assert proc.wait(30) == 2
    said = [line for line in lab.log("nokey").splitlines() if line.startswith("tunneld:")]
    assert len(said) == 1 and "already holds a network" in said[0] and "private.key" in said[0], said
    r.start(i)  # with the key copied from relay 1
    wait_for(lambda: r.endpoint(i) in r.node_status("alpha")["relay"]["relays"], 15,
             what="alpha to learn the new relay")
    # The relays alpha was given die; it moves to the one it only learned of.
    r.stop(0, signal.SIGKILL)
    r.stop(1, signal.SIGKILL)
    try:
        wait_for(lambda: r.home("alpha") == r.endpoint(i) and r.node_status("alpha")["relay"]["connected"], 30,
                 what="alpha to move to the new relay")
    finally:
        r.start(0)
        r.start(1)


# -- helpers run in the namespaces ---------------------------------------------------------

CROWD = r"""
import json, os, socket, sys, time
from tunneld.engine.relaylink import JOINED, JoinRequest, RelayLink
from tunneld.net.base import real_env
from tunneld.proto.handshake import Identity
from tunneld.proto.noise import KeyPair
from tunneld.proto.token import JoinToken

token = JoinToken.parse(sys.argv[1]); relays = sys.argv[2:4]; n = int(sys.argv[4])


class Out:
    def __init__(self, sock, relay): self.sock, self.relay = sock, relay
    def send(self, ep, data): self.sock.sendto(data, self.relay)
    def write_tun(self, packet): pass
    def relay_transport(self, tcp): pass
    def relay_endpoint(self, address): pass


links = []
for i in range(n):  # every other one at each relay, all at once
    host, port = relays[i % 2].split(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); sock.setblocking(False)
    link = RelayLink(Identity(KeyPair.generate()), token.relay_public, JoinRequest(f"crowd{i}", token.credential),
                     Out(sock, (host, int(port))), real_env(), time.monotonic())
    links.append((sock, link, {}))
deadline = time.monotonic() + 90
while time.monotonic() < deadline and not all(got for _, _, got in links):
    now = time.monotonic()
    for sock, link, got in links:
        link.tick(now)
        while True:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                break
            event = link.receive(data, now)
            if event and event[0] == JOINED:
                got["address"] = event[1]["address"]
    time.sleep(0.01)
print(json.dumps([got.get("address") for _, _, got in links if got]))
"""

# Receives a stream; prints its length, SHA-256, the longest silence between reads and
# when that silence ended (wall clock).
GAP_SINK = r"""
import hashlib, socket, sys, time
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(1); srv.settimeout(float(sys.argv[3]))
conn, _ = srv.accept(); conn.settimeout(float(sys.argv[3]))
h = hashlib.sha256(); n = 0; last = time.time(); gap = 0.0; gap_end = last
while True:
    b = conn.recv(1 << 16)
    now = time.time()
    if now - last > gap:
        gap, gap_end = now - last, now
    last = now
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest(), gap, gap_end, flush=True)
"""

PACED = r"""
import hashlib, socket, sys, time
n = int(sys.argv[3]); rate = float(sys.argv[4])
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
h = hashlib.sha256(); sent = 0; block = 0; start = time.monotonic()
while sent < n:
    chunk = (hashlib.sha256(block.to_bytes(8, "big")).digest() * 2048)[: n - sent]
    s.sendall(chunk); h.update(chunk); sent += len(chunk); block += 1
    ahead = sent / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
print(sent, h.hexdigest(), flush=True)
"""
