"""SIGHUP (`systemctl reload`): a daemon reads its config file again. Routes, the log level
and format and the metrics address change while the node runs; its sessions stay up, no
peer handshake is made, tunneld0 and its address are untouched. A bad file is refused in
one log line and the running config stays; what only a restart can change is kept, and
said. Real daemons in the namespace lab, signalled by their own PIDs."""

import json
import os
import signal
import sys

import pytest

from tests.lab import Lab, wait_for
from tests.lab.overlay import Overlay

GET = r"""
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).status)
"""


@pytest.fixture(scope="module")
def ov():
    lab = Lab()
    try:
        ov = Overlay(lab)
        relay_config = os.path.join(lab.tmp, "relay.toml")
        with open(relay_config, "w") as f:
            f.write('log-level = "info"\n')
        ov.relay_config = relay_config
        ov.start_relay("--auto-approve-routes", "198.18.0.0/16", "--config", relay_config)
        token = ov.token("--ttl", "1h")
        for name, body in (("ra", 'log-format = "text"\n'), ("rb", "accept-routes = true\n")):
            path = os.path.join(lab.tmp, f"{name}.toml")
            with open(path, "w") as f:
                f.write(body)
            ov.join(lab.public_host(name), name, token, "--config", path)
        ov.wait_connected(timeout=60)
        assert ov.ping("ra", ov.address("rb"), count=2).returncode == 0
        yield ov
    finally:
        lab.close()


def write(ov, name, body):
    with open(os.path.join(ov.lab.tmp, f"{name}.toml"), "w") as f:
        f.write(body)


def hup(ov, name):
    proc = ov.relay_proc if name == "relay" else ov.node_procs[name]
    os.kill(proc.pid, signal.SIGHUP)


def handshakes(ov, name):
    c = ov.node_status(name)["counters"]
    return c.get("peer_handshakes_sent", 0), c.get("peer_handshakes_answered", 0)


def reloads(ov, name):
    out = []
    for line in ov.lab.log(name).splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            if r.get("event") == "reload":
                out.append(r)
    return out


def test_routes_log_format_and_metrics_change_and_sessions_stay(ov):
    before = {n: (handshakes(ov, n), ov.node_status(n)["address"]) for n in ("ra", "rb")}
    pid = ov.node_procs["ra"].pid
    write(ov, "ra", 'advertise-routes = ["198.18.60.0/24"]\nlog-format = "json"\n'
                    f'metrics = "{ov.nodes["ra"].address}:9100"\n')
    hup(ov, "ra")
    wait_for(lambda: ov.node_status("ra")["advertised_routes"] == ["198.18.60.0/24"], 10,
             what="ra to advertise the new route")
    wait_for(lambda: "198.18.60.0/24" in ov.node_status("rb")["accepted_routes"], 20,
             what="rb to accept ra's new route (the relay auto-approves it)")
    done = reloads(ov, "ra")[-1]
    assert done["ok"] and set(done["changed"]) == {"advertise_routes", "log_format", "metrics"}, done
    status = ov.lab.nsexec(ov.nodes["rb"].ns, sys.executable, "-c", GET,
                           f"http://{ov.nodes['ra'].address}:9100/metrics").stdout.decode().strip()
    assert status == "200"
    assert ov.node_procs["ra"].pid == pid and ov.node_procs["ra"].poll() is None
    for n in ("ra", "rb"):  # no peer handshake, same address on tunneld0, the session still carries
        assert (handshakes(ov, n), ov.node_status(n)["address"]) == before[n], n
    assert ov.ping("rb", ov.address("ra"), count=2).returncode == 0
    assert handshakes(ov, "rb") == before["rb"][0]


def test_accepting_routes_turns_off_and_on(ov):
    write(ov, "rb", "accept-routes = false\n")
    hup(ov, "rb")
    wait_for(lambda: ov.node_status("rb")["accepted_routes"] == [], 10, what="rb to stop accepting routes")
    write(ov, "rb", "accept-routes = true\n")
    hup(ov, "rb")
    wait_for(lambda: "198.18.60.0/24" in ov.node_status("rb")["accepted_routes"], 10,
             what="rb to accept routes again")


def test_a_bad_file_is_refused_in_one_line_and_the_running_config_stays(ov):
    write(ov, "ra", 'advertise-routes = ["198.18.60.0/24"\n')  # not TOML
    hup(ov, "ra")
    wait_for(lambda: any(not r["ok"] for r in reloads(ov, "ra")), 10, what="ra to refuse the file")
    refused = [r for r in reloads(ov, "ra") if not r["ok"]][-1]
    assert refused["level"] == "error" and "ra.toml" in refused["error"], refused
    write(ov, "ra", 'advertise-routes = ["198.18.60.0/24", "10.0.0.0/33"]\nlog-format = "json"\n')
    hup(ov, "ra")
    wait_for(lambda: len([r for r in reloads(ov, "ra") if not r["ok"]]) == 2, 10, what="a bad prefix refused")
    assert ov.node_status("ra")["advertised_routes"] == ["198.18.60.0/24"]
    assert ov.node_procs["ra"].poll() is None


def test_what_only_a_restart_changes_is_kept_and_said(ov):
    write(ov, "ra", 'advertise-routes = ["198.18.60.0/24"]\nlog-format = "json"\n'
                    f'metrics = "{ov.nodes["ra"].address}:9100"\nworkers = 1\n')
    hup(ov, "ra")

    def kept():
        for line in ov.lab.log("ra").splitlines():
            if line.startswith("{") and json.loads(line).get("event") == "reload_kept":
                return json.loads(line)
    said = wait_for(kept, 10, what="ra to say the workers stay")
    assert said["settings"] == ["workers"] and said["level"] == "warning"
    assert len(ov.node_status("ra")["workers"]) == len(os.sched_getaffinity(0))


def test_the_relay_reloads_its_log_format(ov):
    with open(ov.relay_config, "w") as f:
        f.write('log-format = "json"\n')
    hup(ov, "relay")
    wait_for(lambda: reloads(ov, "relay"), 10, what="the relay to reload")
    assert reloads(ov, "relay")[-1]["changed"] == ["log_format"]
    assert ov.status(ov.relay)["nodes"]
