"""`--log-format json` (config `log-format`): one JSON object per line, state changes with
their fields, as a log pipeline reads them; text stays as it was. A relay, a node given the
format on the command line, one given it in its config file, one left on text."""

import json
import os

import pytest

from tests.lab import Lab, tunneld_command, wait_for
from tests.lab.overlay import Overlay


@pytest.fixture(scope="module")
def ov():
    lab = Lab()
    try:
        ov = Overlay(lab)
        ov.start_relay("--log-format", "json")
        token = ov.token("--ttl", "1h")
        ov.join(lab.public_host("ja"), "ja", token, "--log-format", "json", "--workers", "2")
        config = os.path.join(lab.tmp, "jb.toml")
        with open(config, "w") as f:
            f.write('log-format = "json"\n')
        ov.join(lab.public_host("jb"), "jb", token, "--config", config)
        ov.join(lab.public_host("jt"), "jt", token)
        ov.wait_connected(timeout=60)
        assert ov.ping("ja", ov.address("jb"), count=2).returncode == 0
        yield ov
    finally:
        lab.close()


def records(ov, name):
    lines = [line for line in ov.lab.log(name).splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line one JSON object, or this fails


def events(ov, name, kind):
    return [r for r in records(ov, name) if r.get("event") == kind]


def test_every_line_is_one_json_object_with_time_level_logger_and_message(ov):
    for name in ("relay", "ja", "jb"):
        recs = records(ov, name)
        assert recs, name
        for r in recs:
            assert {"ts", "level", "logger", "msg"} <= r.keys(), r
            assert r["ts"].endswith("Z") and r["level"] in ("debug", "info", "warning", "error"), r


def test_state_changes_carry_their_fields(ov):
    connected = events(ov, "ja", "relay_connected")
    assert connected and connected[0]["transport"] == "udp" and connected[0]["name"] == "ja"
    assert connected[0]["address"] == ov.address("ja")
    wait_for(lambda: any(e["peer"] == "jb" and e["path"] == "direct" for e in events(ov, "ja", "path")), 10,
             what="ja's path to jb in its log")
    direct = next(e for e in events(ov, "ja", "path") if e["peer"] == "jb")
    assert direct["endpoint"].startswith(ov.nodes["jb"].public + ":")
    assert {e["node"] for e in events(ov, "relay", "node_connected")} >= {"ja", "jb", "jt"}
    assert any(e["change"] == "SetAddress" for e in events(ov, "jb", "host"))


def test_a_refused_join_is_one_record_with_the_name_and_the_code(ov):
    once = ov.token("--uses", "1")
    ov.join(ov.lab.public_host("jx"), "jx", once)
    ov.wait_connected(timeout=30)
    ov.join(ov.lab.public_host("jy"), "jy", once)  # the token is spent: refused
    wait_for(lambda: [e for e in events(ov, "relay", "join_refused") if e["name"] == "jy"], 20,
             what="the relay to log the refusal")
    refused = next(e for e in events(ov, "relay", "join_refused") if e["name"] == "jy")
    assert refused["code"] and refused["level"] == "warning" and refused["endpoint"], refused


def test_text_stays_text_and_a_bad_format_is_refused_in_one_line(ov):
    lines = ov.lab.log("jt").splitlines()
    assert lines and all(not line.startswith("{") for line in lines)
    assert any(line.startswith("INFO tunneld.node: connected to the relay") for line in lines)
    out = ov.lab.nsexec(ov.relay.ns, *tunneld_command(), "serve", "--listen", "192.0.2.1:7002", "--state-dir",
                        os.path.join(ov.lab.tmp, "jbad"), "--log-format", "xml", check=False)
    err = out.stderr.decode().strip()
    assert out.returncode == 2 and len(err.splitlines()) == 1 and "--log-format" in err, err
