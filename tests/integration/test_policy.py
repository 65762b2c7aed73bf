"""A node's policy file (--policy, config `policy`): it admits from its peers what the file
allows, answers to what it opened pass, everything else is dropped and counted by rule and
by source and port; it covers the prefixes the node advertises, reloads on SIGHUP and leaves
no rules behind. Real daemons, nftables and conntrack in the namespace lab; TCP, UDP and
ping as a user would try them."""

import os
import signal
import subprocess
import sys

import pytest

from tests.lab import Lab, tunneld_command, wait_for
from tests.lab.overlay import Overlay

# Listens on TCP ports (answers each connection with "hi") and echoes UDP, on every address,
# IPv4 and IPv6.
SERVE = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for spec in sys.argv[1:]:
    proto, port = spec.split("/")
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", int(port)))
    if proto == "tcp":
        s.listen(16)
    sel.register(s, selectors.EVENT_READ, proto)
print("listening", flush=True)
while True:
    for key, _ in sel.select(30):
        if key.data == "tcp":
            c, _ = key.fileobj.accept(); c.sendall(b"hi"); c.close()
        else:
            data, addr = key.fileobj.recvfrom(2048); key.fileobj.sendto(data, addr)
"""

# Tries a service: "ok" if it answered, "blocked" if nothing came back in time.
TRY = r"""
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=1.5); s.settimeout(1.5)
        print("ok" if s.recv(2) == b"hi" else "blocked")
    else:
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.0)
        for _ in range(2):
            s.sendto(b"ping", (host, port))
            try:
                print("ok" if s.recv(16) == b"ping" else "blocked"); break
            except socket.timeout:
                pass
        else:
            print("blocked")
except OSError:
    print("blocked")
"""

POLICY = """
[groups]
web = ["pb"]

[[allow]]   # the web group's clients: the service, and ping
from = ["group:web"]
ports = ["tcp/8080", "icmp"]

[[allow]]   # any overlay address, to a UDP service
from = ["100.64.0.0/10"]
ports = ["udp/5353"]
"""


@pytest.fixture(scope="module")
def ov():
    lab = Lab()
    try:
        ov = Overlay(lab)
        ov.start_relay("--auto-approve-routes", "198.18.0.0/16")
        token = ov.token("--ttl", "1h", "--uses", "0")
        ov.token_text = token
        ov.policy = os.path.join(lab.tmp, "pa-policy.toml")
        with open(ov.policy, "w") as f:
            f.write(POLICY)
        ov.config = os.path.join(lab.tmp, "pa.toml")
        with open(ov.config, "w") as f:
            f.write(f'policy = "{ov.policy}"\nadvertise-routes = ["198.18.70.0/24"]\n')
        hosts = {n: lab.public_host(n) for n in ("pa", "pb", "pc")}
        ov.hosts = hosts
        # behind pa, a network it routes for the overlay (a LAN, or its pods)
        lan = lab.add_namespace("palan")
        lab.veth(hosts["pa"].ns, "lan0", lan, "eth0")
        lab.addr(hosts["pa"].ns, "lan0", "198.18.70.1/24")
        lab.addr(lan, "eth0", "198.18.70.2/24")
        lab.nsexec(lan, "ip", "route", "add", "default", "via", "198.18.70.1")
        ov.lan = lan
        ov.join(hosts["pa"], "pa", token, "--config", ov.config)
        ov.join(hosts["pb"], "pb", token, "--accept-routes")
        ov.join(hosts["pc"], "pc", token)
        ov.wait_connected(timeout=60)
        for ns in (hosts["pa"].ns, hosts["pb"].ns, hosts["pc"].ns, lan):
            serve(lab, ns, "tcp/8080", "tcp/8081", "udp/5353", "udp/9001")
        wait_for(lambda: "198.18.70.0/24" in ov.node_status("pb")["accepted_routes"], 20,
                 what="pb to accept pa's LAN")
        yield ov
    finally:
        lab.close()


def serve(lab, ns, *specs):
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", SERVE, *specs],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lab.processes.append(proc)
    assert proc.stdout.readline().strip() == b"listening", proc.stderr.read().decode()


def attempt(ov, src, proto, dst, port):
    return ov.lab.nsexec(ov.nodes[src].ns, sys.executable, "-c", TRY, proto, dst, str(port),
                         timeout=15).stdout.decode().strip()


def policy_status(ov, name="pa"):
    return ov.node_status(name)["policy"]


def test_what_the_policy_allows_passes_and_the_rest_is_denied_and_counted(ov):
    a = ov.address("pa")
    assert attempt(ov, "pb", "tcp", a, 8080) == "ok"  # rule 1, by group
    assert ov.ping("pb", a, count=2).returncode == 0
    assert attempt(ov, "pc", "udp", a, 5353) == "ok"  # rule 2, by prefix
    assert attempt(ov, "pb", "tcp", a, 8081) == "blocked"  # a port no rule names
    assert attempt(ov, "pc", "tcp", a, 8080) == "blocked"  # a peer the rule does not name
    assert ov.ping("pc", a, count=2).returncode != 0
    status = policy_status(ov)
    assert status["file"] == ov.policy
    rules = {r["rule"]: r for r in status["rules"]}
    assert rules[1]["from"] == ["group:web"] and rules[1]["packets"] >= 2, rules  # a SYN, a ping (its 2nd echo is its flow's)
    assert rules[2]["packets"] >= 1, rules
    denied = {(d["from"], d["proto"], d["port"]) for d in status["denied"]}
    assert {("pb", "tcp", 8081), ("pc", "tcp", 8080), ("pc", "icmp", None)} <= denied, status["denied"]
    assert status["denied_packets"] >= 4
    assert ov.node_status("pa")["drops"]["policy_denied"] == status["denied_packets"]
    text = ov.lab.nsexec(ov.hosts["pa"].ns, *tunneld_command(), "status", "--state-dir",
                         ov.hosts["pa"].state_dir).stdout.decode()
    assert f"policy {ov.policy}: rule 1 " in text and "from pc tcp/8080" in text, text
    # the same in Prometheus's text, for node-exporter's textfile collector
    text = ov.lab.nsexec(ov.hosts["pa"].ns, *tunneld_command(), "metrics", "--state-dir",
                         ov.hosts["pa"].state_dir).stdout.decode()
    assert 'tunneld_policy_allowed_packets_total{rule="1"}' in text
    assert 'tunneld_drops_total{reason="policy_denied"}' in text


def test_ipv6_is_admitted_by_the_same_rules(ov):
    """A node name covers its IPv6 overlay address too, "icmp" covers ICMPv6, and a prefix only
    its own family: rule 2's 100.64.0.0/10 admits no IPv6."""
    a6 = ov.node_status("pa")["address6"]
    assert attempt(ov, "pb", "tcp", a6, 8080) == "ok"  # rule 1, by group
    ping6 = ["ping", "-6", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "2", a6]
    assert ov.lab.nsexec(ov.nodes["pb"].ns, *ping6, check=False).returncode == 0
    assert attempt(ov, "pb", "tcp", a6, 8081) == "blocked"
    assert attempt(ov, "pc", "tcp", a6, 8080) == "blocked"
    assert attempt(ov, "pc", "udp", a6, 5353) == "blocked"
    assert ov.lab.nsexec(ov.nodes["pc"].ns, *ping6, check=False).returncode != 0
    assert attempt(ov, "pa", "tcp", ov.node_status("pc")["address6"], 8081) == "ok"  # answers to what pa opened
    denied = {(d["from"], d["source"], d["proto"], d["port"]) for d in policy_status(ov)["denied"]}
    pb6, pc6 = ov.node_status("pb")["address6"], ov.node_status("pc")["address6"]
    assert {("pb", pb6, "tcp", 8081), ("pc", pc6, "tcp", 8080), ("pc", pc6, "udp", 5353),
            ("pc", pc6, "ipv6-icmp", None)} <= denied, denied


def test_answers_to_what_the_node_opened_pass(ov):
    c, b = ov.address("pc"), ov.address("pb")
    assert attempt(ov, "pa", "tcp", c, 8081) == "ok"  # no rule admits pc's answers: the flow does
    assert attempt(ov, "pa", "udp", c, 9001) == "ok"  # the same for UDP
    assert ov.ping("pa", c, count=2).returncode == 0
    assert attempt(ov, "pa", "udp", b, 9001) == "ok"
    # ... and the other way round, the same ports stay shut
    assert attempt(ov, "pc", "udp", ov.address("pa"), 9001) == "blocked"


def test_the_prefixes_the_node_advertises_are_covered(ov):
    assert attempt(ov, "pb", "tcp", "198.18.70.2", 8080) == "ok"  # rule 1, into pa's LAN
    assert attempt(ov, "pb", "tcp", "198.18.70.2", 8081) == "blocked"
    assert ("pb", "tcp", 8081) in {(d["from"], d["proto"], d["port"]) for d in policy_status(ov)["denied"]}
    # what the LAN opens towards the overlay is answered
    assert ov.lab.nsexec(ov.lan, sys.executable, "-c", TRY, "tcp", ov.address("pb"), "8081",
                         timeout=15).stdout.decode().strip() == "ok"


def handshakes(ov, name):
    c = ov.node_status(name)["counters"]
    return c.get("peer_handshakes_sent", 0), c.get("peer_handshakes_answered", 0)


def test_a_reload_changes_the_policy_and_sessions_stay(ov):
    a = ov.address("pa")
    before = handshakes(ov, "pa")
    with open(ov.policy, "w") as f:
        f.write(POLICY + '\n[[allow]]\nfrom = ["pc"]\nports = ["tcp/8080"]\n')
    os.kill(ov.node_procs["pa"].pid, signal.SIGHUP)
    wait_for(lambda: len(policy_status(ov)["rules"]) == 3, 10, what="pa to take the new policy")
    assert attempt(ov, "pc", "tcp", a, 8080) == "ok"
    assert attempt(ov, "pb", "tcp", a, 8081) == "blocked"
    assert handshakes(ov, "pa") == before
    # a broken file is refused in one line; the rules in force stay
    with open(ov.policy, "w") as f:
        f.write('[[allow]]\nfrom = ["group:nobody"]\n')
    os.kill(ov.node_procs["pa"].pid, signal.SIGHUP)
    wait_for(lambda: "no group 'nobody'" in ov.lab.log("pa"), 10, what="pa to refuse the policy")
    line = [x for x in ov.lab.log("pa").splitlines() if "no group 'nobody'" in x]
    assert len(line) == 1 and "reload refused" in line[0] and ov.policy in line[0], line
    assert attempt(ov, "pc", "tcp", a, 8080) == "ok" and len(policy_status(ov)["rules"]) == 3
    assert ov.node_procs["pa"].poll() is None


def nft_table(ov):
    return ov.lab.nsexec(ov.hosts["pa"].ns, "nft", "list", "table", "inet", "tunneld_policy", check=False)


def test_a_bad_policy_stops_the_start_and_a_stopped_node_leaves_no_rules(ov):
    assert nft_table(ov).returncode == 0
    ov.stop_node("pa")
    assert nft_table(ov).returncode != 0  # the table went with the daemon
    with open(ov.policy, "w") as f:
        f.write('[[allow]]\nfrom = ["pb"]\nports = ["tcp/80000"]\n')
    proc = ov.lab.nsexec(ov.hosts["pa"].ns, *tunneld_command(), "join", "--relay", ov.relay_endpoint,
                         "--token-file", os.path.join(ov.lab.tmp, "pa.token"), "--name", "pa", "--state-dir",
                         ov.hosts["pa"].state_dir, "--config", ov.config, check=False)
    err = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "tcp/80000" in err[0], err
    assert nft_table(ov).returncode != 0  # nothing was changed
    # without a policy, the node admits everything again
    with open(ov.config, "w") as f:
        f.write('advertise-routes = ["198.18.70.0/24"]\n')
    ov.join(ov.hosts["pa"], "pa", ov.token_text, "--config", ov.config)
    ov.wait_connected(timeout=60)
    wait_for(lambda: attempt(ov, "pc", "tcp", ov.address("pa"), 8081) == "ok", 20, what="pc to reach pa:8081")
    assert "policy" not in ov.node_status("pa")
