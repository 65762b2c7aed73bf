"""Publishing (frp's job): a node's service on the relay's public port. Real daemons in the
namespace lab: a host outside the overlay, with no tunneld at all, reaches services of a
node that has no inbound path, through the relay's published ports. Services come from the
relay's config file (on a reload) and from `tunneld publish add/remove` on the running
relay; what they must refuse is refused with one line and changes nothing."""

import json
import os
import signal
import sys

import pytest

from tests.lab import Lab, tunneld_command, wait_for
from tests.lab.overlay import Overlay
from tests.lab.services import ECHO, FETCH, MB20, SERVICE, UDP_CLIENT, expected

@pytest.fixture(scope="module")
def pub():
    lab = Lab()
    try:
        ov = Overlay(lab)
        ov.relay_config = os.path.join(lab.tmp, "relay.toml")
        write_config(ov, "")
        ov.start_relay("--config", ov.relay_config)
        token = ov.token("--ttl", "1h")
        ov.join(lab.nat_host("hidden", "no-inbound"), "hidden", token)
        ov.wait_connected(timeout=60)
        ov.outside = lab.public_host("outside")  # no tunneld: a client on the internet
        address = ov.address("hidden")
        ns = ov.nodes["hidden"].ns
        env = {"PYTHONPATH": os.getcwd()}
        service = lab.spawn(ns, sys.executable, "-c", SERVICE, address, "8080", str(MB20), env=env)
        lab.spawn(ns, sys.executable, "-c", ECHO, address, "5353")
        wait_for(lambda: lab.nsexec(ns, "ss", "-Hltn", "sport = :8081").stdout.strip(), 10,
                 what="the services to listen")
        assert service.poll() is None
        yield ov
    finally:
        lab.close()


def write_config(ov, publishes: str, allow: str = '["18000-18999"]') -> None:
    with open(ov.relay_config, "w") as f:
        f.write(f"log-level = \"debug\"\nallow-ports = {allow}\n{publishes}")


def reload_relay(ov) -> None:
    os.kill(ov.relay_proc.pid, signal.SIGHUP)


def relay_cli(ov, *args: str):
    return ov.lab.nsexec(ov.relay.ns, *tunneld_command(), *args, "--state-dir", ov.relay.state_dir, check=False)


def published(ov) -> dict:
    return {r["name"]: r for r in ov.status(ov.relay)["published"]}


def wait_serving(ov, name: str, tcp_port: int | None = None) -> dict:
    """Until the relay publishes name, its node is there, and the node was told."""
    def ready():
        row = published(ov).get(name)
        node = {r["name"] for r in ov.node_status("hidden").get("published", [])}
        return row if row and row["node_connected"] and name in node else None
    return wait_for(ready, 20, what=f"{name} to be published")


def fetch(ov, port: int, timeout: float = 60) -> str:
    return ov.lab.nsexec(ov.outside.ns, sys.executable, "-c", FETCH, ov.relay.address, str(port),
                         timeout=timeout).stdout.decode().strip()


def refused(ov, port: int) -> bool:
    proc = ov.lab.nsexec(ov.outside.ns, sys.executable, "-c",
                         "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)",
                         ov.relay.address, str(port), check=False)
    return proc.returncode != 0 and b"ConnectionRefused" in proc.stderr


WEB = '[[publish]]\nname = "web"\nnode = "hidden"\nport = 8080\nremote-port = 18080\n'


def web(pub) -> None:
    """The config file publishes web (the first test put it there; any test may run alone)."""
    if "web" not in published(pub):
        write_config(pub, WEB)
        reload_relay(pub)
    wait_serving(pub, "web")


def test_tcp_service_of_a_no_inbound_node_from_the_config_file(pub):
    web(pub)
    assert fetch(pub, 18080) == expected(MB20)  # 20 MB, byte-exact, from outside the overlay
    row = published(pub)["web"]
    assert row["connections"] >= 1 and row["bytes_out"] >= MB20 and row["errors"] == 0
    node_row = {r["name"]: r for r in pub.node_status("hidden")["published"]}["web"]
    assert node_row["connections"] >= 1 and node_row["bytes_out"] >= MB20
    assert "published web (hidden:8080 on tcp/18080)" in relay_cli(pub, "status").stdout.decode()
    from prometheus_client.parser import text_string_to_metric_families
    out = relay_cli(pub, "metrics").stdout.decode()
    series = {(x.name, x.labels.get("service"), x.labels.get("direction")): x.value
              for f in text_string_to_metric_families(out) for x in f.samples}
    assert series[("tunneld_published_bytes_total", "web", "out")] >= MB20
    assert series[("tunneld_published_connections_total", "web", None)] >= 1


def test_udp_echo_added_on_the_command_line_then_removed(pub):
    proc = relay_cli(pub, "publish", "add", "echo", "hidden:5353", "--remote-port", "18053", "--udp")
    assert proc.returncode == 0, proc.stderr.decode()
    wait_serving(pub, "echo")
    out = pub.lab.nsexec(pub.outside.ns, sys.executable, "-c", UDP_CLIENT, pub.relay.address, "18053", "20")
    assert int(out.stdout) == 20
    row = published(pub)["echo"]
    assert row["protocol"] == "udp" and row["flows"] >= 1 and row["datagrams_out"] >= 20
    listing = relay_cli(pub, "publish", "list")
    assert b"echo" in listing.stdout and b"udp/18053" in listing.stdout and b"command" in listing.stdout
    assert relay_cli(pub, "publish", "remove", "echo").returncode == 0
    assert "echo" not in published(pub)
    assert not pub.lab.nsexec(pub.relay.ns, "ss", "-Hlun", "sport = :18053").stdout.strip()


def test_tcp_added_on_the_command_line_works_and_removing_closes_the_port(pub):
    proc = relay_cli(pub, "publish", "add", "small", "hidden:8080", "--remote-port", "18081")
    assert proc.returncode == 0, proc.stderr.decode()
    wait_serving(pub, "small")
    again = relay_cli(pub, "publish", "add", "small", "hidden:8080", "--remote-port", "18084")
    assert again.returncode != 0 and b"'tunneld publish remove small' first" in again.stderr
    assert fetch(pub, 18081) == expected(MB20)
    saved = json.load(open(os.path.join(pub.relay.state_dir, "published.json")))
    assert [p["name"] for p in saved] == ["small"]  # kept for the relay's next start
    assert oct(os.stat(os.path.join(pub.relay.state_dir, "published.json")).st_mode & 0o777) == "0o600"
    assert relay_cli(pub, "publish", "remove", "small").returncode == 0
    assert refused(pub, 18081)
    assert json.load(open(os.path.join(pub.relay.state_dir, "published.json"))) == []


def test_proxy_protocol_gives_the_service_the_clients_address(pub):
    proc = relay_cli(pub, "publish", "add", "who", "hidden:8081", "--remote-port", "18082", "--proxy-protocol", "2")
    assert proc.returncode == 0, proc.stderr.decode()
    wait_serving(pub, "who")
    try:
        text = pub.lab.nsexec(pub.outside.ns, sys.executable, "-c",
                              "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), "
                              "timeout=10); print(s.recv(100).decode())", pub.relay.address, "18082").stdout.decode()
        assert text.strip().startswith(pub.outside.address + ":"), text  # not the node's, nor the relay's
    finally:
        relay_cli(pub, "publish", "remove", "who")


def test_refusals_change_nothing(pub):
    web(pub)
    before = published(pub)
    # outside allow-ports, on the command line
    proc = relay_cli(pub, "publish", "add", "wide", "hidden:8080", "--remote-port", "2222")
    assert proc.returncode != 0 and b"outside allow-ports" in proc.stderr
    assert len(proc.stderr.decode().strip().splitlines()) == 1
    # an unknown node
    proc = relay_cli(pub, "publish", "add", "ghost", "nobody:8080", "--remote-port", "18090")
    assert proc.returncode != 0 and b"no node named 'nobody'" in proc.stderr
    # a port something else holds on the relay's host
    holder = pub.lab.spawn(pub.relay.ns, sys.executable, "-c",
                           "import socket,sys,time; s=socket.socket(); s.bind((sys.argv[1], 18091)); s.listen(); "
                           "time.sleep(60)", pub.relay.address)
    try:
        wait_for(lambda: pub.lab.nsexec(pub.relay.ns, "ss", "-Hltn", "sport = :18091").stdout.strip(), 10,
                 what="the holder to listen")
        proc = relay_cli(pub, "publish", "add", "taken", "hidden:8080", "--remote-port", "18091")
        assert proc.returncode != 0 and b"already in use" in proc.stderr
    finally:
        pub.lab.stop(holder)
    # a name the config file holds
    proc = relay_cli(pub, "publish", "add", "web", "hidden:8080", "--remote-port", "18095")
    assert proc.returncode != 0 and b"is in the config file" in proc.stderr
    # a port another publish took
    proc = relay_cli(pub, "publish", "add", "again", "hidden:8080", "--remote-port", "18080")
    assert proc.returncode != 0 and b"already taken by publish 'web'" in proc.stderr
    # the config file: a port outside allow-ports is refused on reload, the running config stays
    log_before = pub.lab.log("relay")
    write_config(pub, '[[publish]]\nname = "web"\nnode = "hidden"\nport = 8080\nremote-port = 2222\n')
    reload_relay(pub)
    wait_for(lambda: "reload refused" in pub.lab.log("relay")[len(log_before):], 10, what="the refusal")
    assert "outside allow-ports" in pub.lab.log("relay")[len(log_before):]
    assert published(pub).keys() == before.keys()
    assert fetch(pub, 18080) == expected(MB20)
    write_config(pub, WEB)
    reload_relay(pub)


def test_forged_work_connections_are_dropped_and_counted(pub):
    from tunneld.proto.framing import frame
    from tunneld.proto.stream import work_frame
    forged = frame(work_frame(1, os.urandom(32))) + frame(b"\x00" * 100)
    script = ("import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5); "
              "s.sendall(bytes.fromhex(sys.argv[3])); print(s.recv(10))")
    web(pub)
    before = pub.status(pub.relay)["drops"].get("work_unproven", 0)
    pub.lab.nsexec(pub.outside.ns, sys.executable, "-c", script, pub.relay.address, "7000", forged.hex(), check=False)
    wait_for(lambda: pub.status(pub.relay)["drops"].get("work_unproven", 0) > before, 10, what="the drop")
    assert fetch(pub, 18080) == expected(MB20)  # and the relay goes on serving


def test_the_node_restarting_leaves_the_port_working(pub):
    web(pub)
    pub.stop_node("hidden")
    wait_for(lambda: not published(pub)["web"]["node_connected"], 30, what="the relay to see the node gone")
    before = published(pub)["web"]["refused"]
    proc = pub.lab.nsexec(pub.outside.ns, sys.executable, "-c", FETCH, pub.relay.address, "18080", check=False)
    assert proc.returncode != 0 and b"ConnectionResetError" in proc.stderr  # refused at once, not hung
    assert published(pub)["web"]["refused"] == before + 1
    doctor = relay_cli(pub, "doctor")
    assert doctor.returncode == 1 and b"publish web: its node hidden is not connected" in doctor.stdout
    pub.join(pub.nodes["hidden"], "hidden", pub.token("--ttl", "1h"))
    pub.wait_connected(timeout=60)
    wait_serving(pub, "web")
    assert fetch(pub, 18080) == expected(MB20)


def test_the_relay_refuses_to_start_with_a_publish_it_cannot_serve():
    with Lab() as lab:
        ov = Overlay(lab)
        ov.relay_config = os.path.join(lab.tmp, "relay.toml")
        write_config(ov, '[[publish]]\nname = "web"\nnode = "nobody"\nport = 8080\nremote-port = 18080\n')
        proc = lab.tunneld(ov.relay, "serve", "--listen", ov.relay_endpoint, "--state-dir", ov.relay.state_dir,
                           "--config", ov.relay_config, log_name="relay")
        assert proc.wait(30) == 2
        log = lab.log("relay").strip().splitlines()
        assert "no node named 'nobody'" in log[-1]
        write_config(ov, '[[publish]]\nname = "web"\nnode = "nobody"\nport = 8080\nremote-port = 80\n')
        proc = lab.tunneld(ov.relay, "serve", "--listen", ov.relay_endpoint, "--state-dir", ov.relay.state_dir,
                           "--config", ov.relay_config, log_name="relay2")
        assert proc.wait(30) == 2
        assert "outside allow-ports" in lab.log("relay2")
        write_config(ov, "")
        with open(os.path.join(ov.relay.state_dir, "published.json"), "w") as f:
            f.write('[{"name": "x"}]')  # damaged: a hand edit gone wrong
        proc = lab.tunneld(ov.relay, "serve", "--listen", ov.relay_endpoint, "--state-dir", ov.relay.state_dir,
                           "--config", ov.relay_config, log_name="relay3")
        assert proc.wait(30) == 2
        assert "published.json" in lab.log("relay3").strip().splitlines()[-1]


def test_what_the_command_line_added_survives_a_relay_restart(pub):
    proc = relay_cli(pub, "publish", "add", "kept", "hidden:8080", "--remote-port", "18083")
    assert proc.returncode == 0, proc.stderr.decode()
    try:
        pub.stop_relay()
        pub.start_relay("--config", pub.relay_config)
        pub.wait_connected(timeout=60)
        row = wait_serving(pub, "kept")
        assert row["from"] == "command"
        assert fetch(pub, 18083) == expected(MB20)
    finally:
        relay_cli(pub, "publish", "remove", "kept")


def test_a_node_whose_network_drops_udp_serves_over_its_tcp_link(pub):
    """The node's session runs over TCP (its network drops UDP): opens and UDP flows ride it,
    and its work connections are TCP anyway."""
    lab = pub.lab
    pub.join(lab.nat_host("tcponly", "no-udp"), "tcponly", pub.token("--ttl", "1h"))
    try:
        states = pub.wait_connected(["tcponly"], timeout=60)
        assert states["tcponly"]["relay"]["transport"] == "tcp"
        address, ns = pub.address("tcponly"), pub.nodes["tcponly"].ns
        lab.spawn(ns, sys.executable, "-c", SERVICE, address, "8080", str(MB20), env={"PYTHONPATH": os.getcwd()})
        lab.spawn(ns, sys.executable, "-c", ECHO, address, "5353")
        wait_for(lambda: lab.nsexec(ns, "ss", "-Hltn", "sport = :8080").stdout.strip(), 10, what="the service")
        for args in (("t-web", "tcponly:8080", "--remote-port", "18180"),
                     ("t-echo", "tcponly:5353", "--remote-port", "18153", "--udp")):
            proc = relay_cli(pub, "publish", "add", *args)
            assert proc.returncode == 0, proc.stderr.decode()
        wait_for(lambda: {"t-web", "t-echo"} <= {r["name"] for r in pub.node_status("tcponly").get("published", [])},
                 20, what="tcponly to be told")
        assert fetch(pub, 18180) == expected(MB20)
        out = lab.nsexec(pub.outside.ns, sys.executable, "-c", UDP_CLIENT, pub.relay.address, "18153", "20")
        assert int(out.stdout) == 20
    finally:
        for name in ("t-web", "t-echo"):
            relay_cli(pub, "publish", "remove", name)
        pub.stop_node("tcponly")
        del pub.nodes["tcponly"]
        relay_cli(pub, "revoke", "tcponly")  # out of the directory: the other tests see the overlay as it was
