"""The systemd units: they verify, they say what the node needs, and tunneld runs with no more
privilege than they grant (CAP_NET_ADMIN for a node, nothing for the relay)."""

import configparser
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from tests.lab.overlay import Overlay
from tests.lab.overlay import transfer

UNITS = pathlib.Path(__file__).resolve().parents[2] / "systemd"
CAP_NET_ADMIN = 1 << 12


def unit(name):
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read(UNITS / name)
    return parser


def test_units_pass_systemd_analyze_verify(tmp_path):
    tunneld = shutil.which("tunneld", path=os.path.dirname(sys.executable))
    assert tunneld, "the tunneld command is not installed next to this Python"
    for name in ("tunneld-node.service", "tunneld-relay.service"):
        text = (UNITS / name).read_text().replace("/usr/local/bin/tunneld", tunneld)
        (tmp_path / name).write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", *map(str, tmp_path.iterdir())],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "tunneld" not in proc.stderr, proc.stderr  # no warning about our units


def test_the_node_unit_says_what_kubelet_relies_on():
    u = unit("tunneld-node.service")
    assert u["Service"]["Type"] == "notify"
    assert "kubelet.service" in u["Unit"]["Before"].split()
    assert "kubelet.service" in u["Install"]["WantedBy"].split()
    assert "RequiredBy" not in u["Install"]  # a tunneld restart must not take kubelet down with it
    assert u["Service"]["Restart"] == "on-failure"
    assert set(u["Service"]["RestartPreventExitStatus"].split()) == {"2", "3"}
    assert u["Service"]["StateDirectory"] == "tunneld"
    assert u["Service"]["CapabilityBoundingSet"] == "CAP_NET_ADMIN"
    assert u["Service"]["AmbientCapabilities"] == "CAP_NET_ADMIN"
    assert u["Service"]["DeviceAllow"] == "/dev/net/tun rw" and u["Service"]["DevicePolicy"] == "closed"
    assert "join" in u["Service"]["ExecStart"] and "/var/lib/tunneld" in u["Service"]["ExecStart"]
    r = unit("tunneld-relay.service")
    assert r["Service"]["Type"] == "notify" and r["Service"]["CapabilityBoundingSet"] == ""


def caps(pid, field="CapEff"):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1], 16)
    raise AssertionError(field)


def test_tunneld_runs_with_only_the_units_capabilities(lab):
    only = lambda keep: ("setpriv", f"--bounding-set=-all{keep}", f"--inh-caps=-all{keep}",  # noqa: E731
                         f"--ambient-caps=-all{keep}", "--")
    ov = Overlay(lab)
    ov.start_relay("--workers", "2", wrap=only(""))  # its worker too: SO_REUSEPORT and BPF need no capability
    assert caps(ov.relay_proc.pid) == 0
    (worker,) = ov.status(ov.relay)["workers"]
    assert worker["running"] and caps(worker["pid"]) == 0 and caps(worker["pid"], "CapBnd") == 0
    token = ov.token()
    ov.join(lab.public_host("alpha"), "alpha", token, wrap=only(",+net_admin"))
    ov.join(lab.nat_host("bravo", "no-inbound"), "bravo", token, wrap=only(",+net_admin"))
    ov.wait_connected()
    for name in ("alpha", "bravo"):
        assert caps(ov.node_procs[name].pid) == CAP_NET_ADMIN
        assert caps(ov.node_procs[name].pid, "CapBnd") == CAP_NET_ADMIN
    sent, received = transfer(ov, "alpha", "bravo", 10250, 1_000_000)
    assert sent == received


@pytest.mark.parametrize("name", ["tunneld-node.service", "tunneld-relay.service"])
def test_units_run_the_installed_command(name):
    exec_start = unit(name)["Service"]["ExecStart"].split()
    assert exec_start[0] == "/usr/local/bin/tunneld" and "--config" in exec_start
