"""Restarts, refusals and fallbacks, each in a topology of its own."""

import json
import os
import signal
import socket
import sys
import time

import pytest

from tests.lab import wait_for
from tests.lab.overlay import Overlay, standard, transfer
from tunneld.proto.token import JoinToken


def link(ov, name):
    out = ov.lab.nsexec(ov.nodes[name].ns, "ip", "-j", "addr", "show", "dev", "tunneld0").stdout
    (info,) = json.loads(out)
    return info["ifindex"], [a["local"] for a in info["addr_info"] if a["family"] == "inet"]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_relay_restart_every_node_comes_back_with_its_address(lab, how):
    ov = standard(lab)
    before = {n: link(ov, n) for n in ov.nodes}
    assert ov.ping("public", ov.address("hidden")).returncode == 0
    ov.stop_relay(how)
    time.sleep(3)
    # Meanwhile every node keeps its interface and its address.
    assert {n: link(ov, n) for n in ov.nodes} == before
    ov.start_relay()
    states = ov.wait_connected(timeout=30)
    assert {n: link(ov, n) for n in ov.nodes} == before
    assert {n: [st["address"]] for n, st in states.items()} == {n: before[n][1] for n in before}
    for src, dst in (("public", "hidden"), ("hidden", "natted"), ("natted", "public")):
        r = ov.ping(src, ov.address(dst), count=2)
        assert r.returncode == 0, f"{src} -> {dst} after the restart"


def test_node_restart_keeps_interface_address_and_traffic(lab):
    ov = standard(lab)
    before = link(ov, "hidden")
    assert ov.stop_node("hidden") == 0
    # The interface persists without its daemon (flannel.1 and kubelet may hang on it).
    assert link(ov, "hidden") == before
    ov.join(ov.nodes["hidden"], "hidden")
    ov.wait_connected()
    assert link(ov, "hidden") == before
    sent, received = transfer(ov, "public", "hidden", 10250, 2_000_000)
    assert sent == received


def refused(proc, timeout=30):
    try:
        proc.wait(timeout)
    except Exception:
        raise AssertionError("the node did not give up on a refused join")
    return proc.returncode


def test_refusals_exit_3_with_one_line(lab):
    ov = Overlay(lab)
    ov.start_relay()
    good = JoinToken.parse(ov.token())
    cases = {
        "wrong-secret": (JoinToken(good.relay_public, good.token_id, bytes(16)).encode(), "not valid"),
        "expired": (ov.token("--ttl", "1s"), "expired"),
        "revoked": (ov.token("--ttl", "1h"), "revoked"),
    }
    ov.lab.nsexec(ov.relay.ns, sys.executable, "-m", "tunneld", "token", "--state-dir", ov.relay.state_dir,
                  "--revoke", JoinToken.parse(cases["revoked"][0]).token_id.hex())
    time.sleep(1.5)  # let the 1 s token expire
    for name, (token, words) in cases.items():
        host = lab.public_host(name)
        proc = ov.join(host, name, token)
        assert refused(proc) == 3, lab.log(name)
        lines = lab.log(name).strip().splitlines()
        assert lines[-1].startswith("tunneld: refused by the relay at 192.0.2.1:7000:"), lines
        assert words in lines[-1] and "tunneld token" in lines[-1]
        assert "Traceback" not in lab.log(name)
        st = ov.status(ov.relay)
        assert name not in [n["name"] for n in st["nodes"]]


def test_a_node_whose_network_drops_udp_joins_over_tcp(lab):
    ov = Overlay(lab)
    ov.start_relay()
    token = ov.token()
    ov.join(lab.public_host("public"), "public", token)
    ov.join(lab.nat_host("tcponly", "no-udp"), "tcponly", token)
    states = ov.wait_connected(timeout=40)
    assert states["tcponly"]["relay"]["transport"] == "tcp"
    assert states["public"]["relay"]["transport"] == "udp"
    assert ov.ping("public", ov.address("tcponly")).returncode == 0
    assert ov.ping("tcponly", ov.address("public")).returncode == 0
    sent, received = transfer(ov, "public", "tcponly", 10250, 4_000_000)
    assert sent == received


def test_second_daemon_on_the_same_interface_is_refused(lab):
    ov = Overlay(lab)
    ov.start_relay()
    host = lab.public_host("public")
    ov.join(host, "public")
    ov.wait_connected()
    other = os.path.join(lab.tmp, "other")
    proc = lab.nsexec(host.ns, "env", f"TUNNELD_TOKEN={ov.token()}", sys.executable, "-m", "tunneld", "join",
                      "--relay", ov.relay_endpoint, "--name", "other", "--state-dir", other, check=False)
    assert proc.returncode == 1
    err = proc.stderr.decode().strip().splitlines()
    assert len(err) == 1 and "tunneld0 is in use" in err[0], err
    assert ov.ping("public", ov.address("public"), count=1).returncode == 0


def test_nodes_outlast_a_long_relay_outage(lab):
    """Longer than the nodes' dead-relay timeout: they back off, keep their interfaces, and return."""
    ov = standard(lab)
    before = {n: link(ov, n) for n in ov.nodes}
    ov.stop_relay(signal.SIGKILL)
    wait_for(lambda: not any(ov.node_status(n)["relay"]["connected"] for n in ov.nodes), 40,
             interval=0.5, what="the nodes to notice the relay is gone")
    time.sleep(4)  # a few backoff rounds
    assert {n: link(ov, n) for n in ov.nodes} == before
    assert all(proc.poll() is None for proc in ov.node_procs.values())
    ov.start_relay()
    started = time.monotonic()
    ov.wait_connected(timeout=30)
    assert time.monotonic() - started < 15  # the backoff is capped at 8 s, plus jitter and a round trip
    assert {n: link(ov, n) for n in ov.nodes} == before
    assert ov.ping("hidden", ov.address("public")).returncode == 0


def test_revoking_a_node_on_a_running_relay(lab):
    ov = standard(lab)
    started = time.monotonic()
    out = lab.nsexec(ov.relay.ns, sys.executable, "-m", "tunneld", "revoke", "natted",
                     "--state-dir", ov.relay.state_dir)
    assert "revoked natted" in out.stderr.decode()
    # The relay tells the node over its session: it stops at once, not at its next contact.
    assert refused(ov.node_procs["natted"], timeout=10) == 3
    assert time.monotonic() - started < 5
    assert "revoked" in lab.log("natted").strip().splitlines()[-1]
    wait_for(lambda: all("natted" not in [p["name"] for p in ov.node_status(n)["peers"]]
                         for n in ("public", "hidden")), 5, what="peers to forget natted")
    assert "natted" not in [n["name"] for n in ov.status(ov.relay)["nodes"]]
    assert ov.ping("public", ov.address("hidden")).returncode == 0
    # Its key is refused from now on, even with a fresh token.
    again = ov.join(ov.nodes["natted"], "natted", ov.token())
    assert refused(again) == 3
    assert "key was revoked" in lab.log("natted").strip().splitlines()[-1]


def test_systemd_readiness_comes_with_the_address(lab):
    """As the node unit runs it: --config with a token file, Type=notify on a real notify socket."""
    ov = Overlay(lab)
    ov.start_relay()
    host = lab.public_host("node")
    token_file = os.path.join(lab.tmp, "token")
    with open(token_file, "w") as f:
        f.write(ov.token() + "\n")
    config = os.path.join(lab.tmp, "node.toml")
    with open(config, "w") as f:
        f.write(f'relay = "{ov.relay_endpoint}"\ntoken-file = "{token_file}"\nname = "node"\n'
                f'state-dir = "{host.state_dir}"\n')
    notify_path = os.path.join(lab.tmp, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(20)
    try:
        proc = lab.tunneld(host, "join", "--config", config, log_name="node", env={"NOTIFY_SOCKET": notify_path})
        message = sock.recv(4096).decode()
        # At the moment of READY=1 the address is already on the interface.
        out = lab.nsexec(host.ns, "ip", "-j", "addr", "show", "dev", "tunneld0").stdout
        (info,) = json.loads(out)
        addresses = [a["local"] for a in info["addr_info"] if a["family"] == "inet"]
    finally:
        sock.close()
    assert message.startswith("READY=1") and "STATUS=tunneld0 100.64.0.1" in message
    assert addresses == ["100.64.0.1"] and "UP" in info["flags"]
    assert proc.poll() is None


def test_after_a_reboot_the_node_is_ready_while_the_relay_is_unreachable(lab):
    ov = standard(lab)
    address = ov.address("hidden")
    token = ov.token()  # the node's config keeps its token; only the relay key in it matters now
    assert ov.stop_node("hidden") == 0
    ov.stop_relay()
    host = ov.nodes["hidden"]
    lab.nsexec(host.ns, "ip", "link", "del", "tunneld0")  # as after a reboot
    notify_path = os.path.join(lab.tmp, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(20)
    try:
        lab.tunneld(host, "join", "--relay", ov.relay_endpoint, "--name", "hidden", "--state-dir", host.state_dir,
                    log_name="hidden-again", env={"NOTIFY_SOCKET": notify_path, "TUNNELD_TOKEN": token})
        message = sock.recv(4096).decode()
    finally:
        sock.close()
    assert message.startswith("READY=1")
    assert link(ov, "hidden")[1] == [address]
