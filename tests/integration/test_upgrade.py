"""Rolling upgrades: the previous release (the wheel in tests/releases/ of the newest release
older than this version, installed into a venv of its own) and this checkout in one network,
as a cluster looks while it is upgraded node by node.

Each network has, besides its relay (old or new):
  old-public, new-public    public addresses: they go direct
  old-hidden, new-hidden    behind NATs that let nothing in: they can only be relayed
and traffic must pass between every old and every new node, both ways, on the path the
NATs allow: old <-> new direct, and old <-> new through the relay.
"""

import subprocess
import sys

import pytest

from tests.lab import wait_for
from tests.lab.overlay import Overlay, transfer
from tests.lab.release import previous_release, release_python

NODES = ("old-public", "new-public", "old-hidden", "new-hidden")


@pytest.fixture(scope="module")
def old_python():
    return release_python(previous_release())


def protocol_of(python) -> str:
    """The protocol range a release speaks, as status shows it (0.1.0 has no hello: "1")."""
    proc = subprocess.run([python, "-I", "-c", "from tunneld.proto.version import OURS; print(OURS)"],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "1"


def path(ov, src, dst):
    return next(p["path"] for p in ov.node_status(src)["peers"] if p["name"] == dst)


def mixed(lab, old_python, old_relay: bool, *relay_args: str) -> Overlay:
    ov = Overlay(lab, relay_python=old_python if old_relay else None)
    ov.start_relay(*relay_args)
    token = ov.token("--ttl", "1h")
    for name in NODES:
        host = lab.public_host(name) if name.endswith("public") else lab.nat_host(name, "no-inbound")
        ov.join(host, name, token, python=old_python if name.startswith("old") else None)
    ov.wait_connected(timeout=60)
    return ov


@pytest.mark.parametrize("relay", ["old relay", "new relay"])
def test_old_and_new_talk_both_ways_direct_and_relayed(lab, old_python, relay):
    ov = mixed(lab, old_python, relay == "old relay")
    # The side that sends first starts the end-to-end handshake: the new release starts it
    # with the old one on two pairs, the old release on the other two.
    for old, new, expected, first in (("old-public", "new-public", "direct", "new"),
                                      ("old-hidden", "new-hidden", "relay", "new"),
                                      ("old-public", "new-hidden", "direct", "old"),
                                      ("old-hidden", "new-public", "direct", "old")):
        for src, dst in ((new, old), (old, new)) if first == "new" else ((old, new), (new, old)):
            result = ov.ping(src, ov.address(dst), count=3)
            assert result.returncode == 0, f"{src} -> {dst}: {result.stdout.decode()}"
        wait_for(lambda: path(ov, old, new) == path(ov, new, old) == expected, 30,
                 what=f"{old} <-> {new} to be {expected}")
    sent, received = transfer(ov, "old-hidden", "new-hidden", 10250, 3_000_000)
    assert sent == received  # through the relay, old to new
    sent, received = transfer(ov, "new-public", "old-public", 10250, 3_000_000)
    assert sent == received  # direct, new to old
    assert ov.ping("new-public", ov.address("new-hidden"), count=2).returncode == 0  # new and new
    st = ov.node_status("new-public")
    peers = {p["name"]: p for p in st["peers"]}
    assert all(p["problem"] is None for p in peers.values())
    old_protocol, new_protocol = protocol_of(old_python), protocol_of(sys.executable)
    assert peers["new-hidden"]["protocol"] == new_protocol and peers["old-hidden"]["protocol"] == old_protocol
    assert st["relay"]["protocol"] == (old_protocol if relay == "old relay" else new_protocol)
    assert not st["drops"].get("internal_error") and not ov.status(ov.relay)["drops"].get("internal_error")


def test_a_new_relay_publishes_for_new_nodes_and_asks_nothing_of_old_ones(lab, old_python):
    """Publishing needs the node's "publish" capability: an old node's clients are refused
    (counted), and nothing the old node would not understand reaches it."""
    import os
    from tests.lab.services import FETCH, SERVICE, expected
    config = os.path.join(lab.tmp, "relay.toml")
    with open(config, "w") as f:
        f.write('allow-ports = ["18000-18999"]\n')
    ov = mixed(lab, old_python, False, "--config", config)
    for name in ("new-hidden", "old-hidden"):
        lab.spawn(ov.nodes[name].ns, sys.executable, "-c", SERVICE, ov.address(name), "8080", "1000000",
                  env={"PYTHONPATH": os.getcwd()})
        wait_for(lambda n=name: lab.nsexec(ov.nodes[n].ns, "ss", "-Hltn", "sport = :8080").stdout.strip(), 10,
                 what="the service")
        remote = "18080" if name.startswith("new") else "18081"
        lab.nsexec(ov.relay.ns, sys.executable, "-m", "tunneld", "publish", "add", name, f"{name}:8080",
                   "--remote-port", remote, "--state-dir", ov.relay.state_dir)
    outside = lab.public_host("outside")
    old_drops = dict(ov.node_status("old-hidden")["drops"])
    wait_for(lambda: any(p["name"] == "new-hidden" for p in ov.node_status("new-hidden").get("published", [])), 20,
             what="the new node to be told")
    got = lab.nsexec(outside.ns, sys.executable, "-c", FETCH, ov.relay.address, "18080", timeout=60)
    assert got.stdout.decode().strip() == expected(1000000)
    refused = lab.nsexec(outside.ns, sys.executable, "-c", FETCH, ov.relay.address, "18081", check=False)
    assert refused.returncode != 0 and b"ConnectionResetError" in refused.stderr
    rows = {r["name"]: r for r in ov.status(ov.relay)["published"]}
    assert rows["old-hidden"]["refused"] == 1 and not rows["old-hidden"]["node_connected"]
    now = ov.node_status("old-hidden")["drops"]
    for reason in ("bad_control", "unexpected_control"):  # nothing it would not understand was sent
        assert now.get(reason, 0) == old_drops.get(reason, 0)
