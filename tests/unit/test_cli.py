"""The command-line contract: exit codes, one-line errors, and a bad call changes nothing."""

import subprocess
import sys

import pytest

from tunneld.proto.token import JoinToken


def tunneld(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "tunneld", *args], capture_output=True, text=True,
                          timeout=30, cwd=cwd)


def one_line_error(proc, code, *words):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tunneld: ") and "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def relay_state(path) -> str:
    """A state dir as `tunneld serve` leaves it: its key and its database."""
    import asyncio
    from tunneld.state import load_identity, prepare_dir
    from tunneld.store.sqlite import SqliteStore
    state = prepare_dir(str(path))
    load_identity(state)
    asyncio.run(SqliteStore(f"{state}/relay.db").close())
    return state


def test_token_prints_one_token_and_remembers_it(tmp_path):
    state = relay_state(tmp_path / "relay")
    proc = tunneld("token", "--state-dir", state, "--ttl", "2h")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1
    token = JoinToken.parse(lines[0])
    listed = tunneld("token", "--state-dir", state, "--list")
    assert token.token_id.hex() in listed.stdout and "valid" in listed.stdout
    assert tunneld("token", "--state-dir", state, "--revoke", token.token_id.hex()).returncode == 0
    assert "revoked" in tunneld("token", "--state-dir", state, "--list").stdout
    again = tunneld("token", "--state-dir", state)
    assert JoinToken.parse(again.stdout.strip()).relay_public == token.relay_public  # same relay key


@pytest.mark.parametrize("command", [["token"], ["token", "--list"], ["token", "--revoke", "00ff"],
                                     ["revoke", "edge-1"]])
def test_relay_commands_refuse_a_state_dir_that_holds_no_relay(tmp_path, command):
    """Before: `tunneld token` there made a fresh relay key and printed a token for a relay
    that does not exist. A node's state dir (a key, no database) is no relay's either."""
    empty, node = tmp_path / "typo", tmp_path / "node"
    node.mkdir(mode=0o700)
    (node / "private.key").write_text("x")
    for state in (empty, node):
        one_line_error(tunneld(*command, "--state-dir", str(state)), 2, "no relay in", "tunneld serve")
    assert not empty.exists() and sorted(p.name for p in node.iterdir()) == ["private.key"]


def test_token_with_a_bad_ttl_changes_nothing(tmp_path):
    state = tmp_path / "relay"
    one_line_error(tunneld("token", "--state-dir", str(state), "--ttl", "forever"), 2, "--ttl")
    assert not state.exists()


@pytest.mark.parametrize("args,words", [
    (["join"], ["--relay"]),
    (["join", "--relay", "192.0.2.1"], ["HOST:PORT"]),
    (["join", "--relay", "192.0.2.1:7000"], ["--token"]),
    (["join", "--relay", "192.0.2.1:7000", "--token", "a", "--token-file", "b"], ["exactly one"]),
    (["join", "--relay", "192.0.2.1:7000", "--token", "garbage"], ["tdj1."]),
    (["join", "--relay", "192.0.2.1:7000", "--token-file", "/nonexistent/token"], ["--token-file"]),
    (["join", "--relay", "192.0.2.1:7000", "--token", "x", "--name", "Bad Name!"], ["--name"]),
    (["join", "--relay", "192.0.2.1:7000", "--token", "x", "--name", "n", "--interface", "much-too-long-name0"],
     ["--interface"]),
    (["join", "--relay", "192.0.2.1:7000", "--token", "x", "--name", "n", "--advertise-routes", "198.18.0.1/16"],
     ["--advertise-routes"]),
    (["join", "--relay", "192.0.2.1:7000", "--token", "x", "--name", "n", "--advertise-routes", "0.0.0.0/0"],
     ["default route"]),
    (["join", "--relay", "192.0.2.1:7000", "--token", "x", "--name", "n", "--pod-cidr", "198.18.1.1/24"],
     ["--pod-cidr"]),
    (["join", "--relay", "192.0.2.1:7000", "--token", "x", "--name", "n", "--pod-cidr", "198.18.1.0/24,198.18.2.0/24"],
     ["--pod-cidr"]),
    (["kube-env", "--net-conf", "geneve"], ["--net-conf", "vxlan or routed"]),
    (["kube-env", "--net-conf", "routed", "--cluster-cidr", "10.244.0.1/16"], ["--cluster-cidr"]),
    (["serve"], ["--listen"]),
    (["serve", "--listen", "0.0.0.0:7000", "--workers", "0"], ["--workers"]),
    (["serve", "--listen", "0.0.0.0:7000", "--workers", "65"], ["--workers"]),
    (["serve", "--listen", "0.0.0.0:7000", "--network", "100.64.0.1/10"], ["--network"]),
    (["serve", "--listen", "0.0.0.0:7000", "--log-level", "loud"], ["--log-level"]),
    (["frobnicate"], ["No such command"]),
    (["join", "--bogus"], ["--bogus"]),
    (["join", "--port", "notanumber"], ["--port"]),
])
def test_usage_errors_exit_2_in_one_line(args, words, tmp_path):
    state = tmp_path / "state"
    one_line_error(tunneld(*args, "--state-dir", str(state)) if args[0] in ("join", "serve")
                   and "--bogus" not in args else tunneld(*args), 2, *words)
    assert not state.exists()  # nothing was created


def test_config_file_errors(tmp_path):
    cfg = tmp_path / "join.toml"
    cfg.write_text('relay = "192.0.2.1:7000"\ntokn = "typo"\n')
    one_line_error(tunneld("join", "--config", str(cfg)), 2, "unknown setting 'tokn'")


def test_status_without_a_daemon(tmp_path):
    one_line_error(tunneld("status", "--state-dir", str(tmp_path)), 1, "no tunneld is running")


def test_revoke_unknown_node(tmp_path):
    state = relay_state(tmp_path / "relay")
    one_line_error(tunneld("revoke", "ghost", "--state-dir", state), 2, "ghost")


def test_help_and_version():
    assert tunneld("--help").returncode == 0
    assert "tunneld" in tunneld("--version").stdout
    for cmd in ("serve", "token", "join", "status", "revoke"):
        assert tunneld(cmd, "--help").returncode == 0


def test_kube_env_without_an_address(tmp_path):
    one_line_error(tunneld("kube-env", "--state-dir", str(tmp_path)), 1, "no overlay address yet")


def test_config_file_takes_route_settings(tmp_path):
    cfg = tmp_path / "join.toml"
    cfg.write_text('relay = "192.0.2.1:7000"\ntoken = "x"\nname = "n"\naccept-routes = "yes"\n')
    one_line_error(tunneld("join", "--config", str(cfg), "--state-dir", str(tmp_path / "s")), 2,
                   "accept-routes takes true or false")


@pytest.mark.parametrize("content,words", [
    (None, ["cannot read --config"]),
    (b'relay = "192.0.2.1:7000\n', ["not valid TOML"]),
    (b'relay = "192.0.2.1:7000"\nname = "caf\xe9"\n', ["not UTF-8"]),
    (b'relay = "192.0.2.1:7000"\ntoken = "x"\nname = "n"\nport = 70000\n', ["--port"]),
])
def test_bad_config_files_exit_2_and_change_nothing(tmp_path, content, words):
    cfg = tmp_path / "join.toml"
    if content is not None:
        cfg.write_bytes(content)
    state = tmp_path / "state"
    one_line_error(tunneld("join", "--config", str(cfg), "--state-dir", str(state)), 2, *words)
    assert not state.exists()


def test_bad_listen_port_and_state_dir_that_is_a_file(tmp_path):
    state = tmp_path / "state"
    one_line_error(tunneld("serve", "--listen", "0.0.0.0:70000", "--state-dir", str(state)), 2, "1-65535")
    assert not state.exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_error(tunneld("token", "--state-dir", str(afile)), 2, "no relay in")
    assert afile.read_text() == "x"


def test_a_key_readable_by_others_is_refused_and_left_alone(tmp_path):
    state = tmp_path / "relay"
    relay_state(state)
    key = state / "private.key"
    key.chmod(0o644)
    before = key.read_bytes()
    one_line_error(tunneld("token", "--state-dir", str(state)), 2, "chmod 600")
    assert key.read_bytes() == before and oct(key.stat().st_mode & 0o777) == "0o644"


def test_import_frpc_prints_the_settings_or_refuses_in_one_line(tmp_path):
    good = tmp_path / "frpc.toml"
    good.write_text('serverAddr = "203.0.113.10"\n[[proxies]]\nname = "ssh"\ntype = "tcp"\nlocalPort = 22\n'
                    'remotePort = 6000\n[[proxies]]\nname = "web"\ntype = "http"\nlocalPort = 80\n')
    proc = tunneld("import-frpc", str(good), "--node", "edge-1")
    assert proc.returncode == 0, proc.stderr
    assert 'node = "edge-1"' in proc.stdout and "remote-port = 6000" in proc.stdout
    assert "proxy 'web' (http) is not carried over" in proc.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[[proxies]\n")
    one_line_error(tunneld("import-frpc", str(bad)), 2, "neither frpc.toml nor frpc.ini")
    one_line_error(tunneld("import-frpc", str(tmp_path / "missing.toml")), 2, "cannot read")
    one_line_error(tunneld("import-frpc", str(good), "--node", "Bad Name"), 2, "--node")
