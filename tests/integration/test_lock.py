"""The network lock, end to end in the namespace lab: an operator key the relay never holds
endorses the node keys, and a compromised relay (tests/lab/evil_relay.py: it puts its own key
in bravo's place in the directory and answers handshakes as bravo) cannot read a packet.
Without the lock, the same relay does: that is what the lock is for."""

import os
import subprocess
import sys

from tests.lab import wait_for
from tests.lab.overlay import Overlay

NODES = ("alpha", "bravo")


def lock_key(lab) -> tuple[str, str]:
    """`tunneld lock init` on an admin machine (the lab's own namespace: no network needed)."""
    path = os.path.join(lab.tmp, "lock.key")
    out = subprocess.run([sys.executable, "-m", "tunneld", "lock", "init", "--out", path], capture_output=True,
                         text=True, check=True).stdout
    return path, out.strip().splitlines()[-1]


def endorse(token: str, key: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "tunneld", "lock", "endorse", "-", "--key", key], input=token,
                          capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def network(lab, *, evil: bool, endorsed: bool, locked_relay: bool = False) -> tuple[Overlay, str]:
    log = os.path.join(lab.tmp, "intercepted.log")
    ov = Overlay(lab, relay_module="tests.lab.evil_relay" if evil else None,
                 relay_env={"EVIL_VICTIM": "bravo", "EVIL_LOG": log})
    key, public = lock_key(lab)
    ov.start_relay(*(("--lock", public) if locked_relay else ()))
    token = ov.token("--uses", "0")
    if endorsed:
        token = endorse(token, key)
    for name in NODES:  # behind NATs that let nothing in: everything goes through the relay
        ov.join(lab.nat_host(name, "no-inbound"), name, token)
    if evil and endorsed:  # the nodes have no peers to show: they refused bravo's swapped key
        wait_for(lambda: all(ov.node_status(n)["relay"]["connected"] for n in NODES)
                 and ov.node_status("alpha")["unendorsed"], 40, what="the nodes to join and judge the directory")
    else:
        ov.wait_connected(timeout=40)
    return ov, log


def intercepted(log: str) -> list[str]:
    return [l for l in open(log).read().splitlines() if l.startswith("INTERCEPTED")] if os.path.exists(log) else []


def test_endorsed_nodes_talk_and_an_unendorsed_token_is_refused(lab):
    ov, _ = network(lab, evil=False, endorsed=True, locked_relay=True)
    assert ov.ping("alpha", ov.address("bravo"), count=3).returncode == 0
    assert ov.ping("bravo", ov.address("alpha"), count=3).returncode == 0
    st = ov.node_status("alpha")
    assert st["lock"].startswith("tdl1.") and st["unendorsed"] == [] and st["key_changes"] == []
    proc = ov.join(lab.public_host("plain"), "plain", ov.token())  # a token the lock did not endorse
    proc.wait(30)
    assert proc.returncode == 3
    last = lab.log("plain").strip().splitlines()[-1]
    assert last.startswith("tunneld: refused by the relay") and "locked" in last and "lock endorse" in last
    assert "plain" not in [n["name"] for n in ov.status(ov.relay)["nodes"]]


def test_without_the_lock_a_compromised_relay_reads_the_traffic(lab):
    """The control: the same malicious relay, plain tokens. It succeeds, so the next test can fail."""
    ov, log = network(lab, evil=True, endorsed=False)
    ov.ping("alpha", ov.address("bravo"), count=3)  # answered by nobody: the relay swallows it
    wait_for(lambda: intercepted(log), 10, what="the relay to read alpha's packets")
    st = ov.node_status("alpha")
    assert st["lock"] is None and next(p for p in st["peers"] if p["name"] == "bravo")["session"]


def test_under_the_lock_a_compromised_relay_reads_nothing_and_the_node_says_so(lab):
    ov, log = network(lab, evil=True, endorsed=True)
    result = ov.ping("alpha", ov.address("bravo"), count=3)
    assert result.returncode != 0  # no session with the relay's key: nothing leaves
    assert intercepted(log) == []
    st = ov.node_status("alpha")
    assert st["unendorsed"] == ["bravo"] and "bravo" not in [p["name"] for p in st["peers"]]
    assert st["drops"].get("peer_unendorsed", 0) >= 1
    assert "network lock does not endorse" in lab.log("alpha")
