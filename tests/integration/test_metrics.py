"""Prometheus metrics (`--metrics HOST:PORT`, `tunneld metrics`), scraped by Debian's real
prometheus server in the namespace lab and checked through its HTTP API, as an operator's
dashboards would ask: a relay, two public nodes that go direct, one behind a cone NAT and
one with no inbound path, which reach each other through the relay; prometheus runs on a
node and scrapes the nodes over the overlay, the relay on its public address."""

import json
import os
import sys

import pytest

from tests.lab import Lab, tunneld_command, wait_for
from tests.lab.overlay import Overlay, transfer

PORT = 9100
QUERY = r"""
import json, sys, urllib.parse, urllib.request
url = sys.argv[1] + "/api/v1/query?" + urllib.parse.urlencode({"query": sys.argv[2]})
print(json.dumps(json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]))
"""
SILENT = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.settimeout(20)
t = time.monotonic()
s.recv(1)  # b"": the server closed it
print(time.monotonic() - t)
"""
# What the server answers (a door it closes on us, with our request still unread, is a reset:
# closed all the same).
GET = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
out = b""
try:
    s.sendall(sys.argv[3].encode().decode("unicode_escape").encode("latin-1"))
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
except (ConnectionResetError, BrokenPipeError):
    pass
sys.stdout.write(out.decode("latin-1"))
"""


@pytest.fixture(scope="module")
def lab():
    lab = Lab()
    try:
        ov = Overlay(lab)
        ov.start_relay("--metrics", f"192.0.2.1:{PORT}")
        token = ov.token("--ttl", "1h")
        hosts = {"ma": lab.public_host("ma"), "mb": lab.public_host("mb"), "mc": lab.nat_host("mc", "cone")}
        for name, host in hosts.items():
            ov.join(host, name, token, "--metrics", f"0.0.0.0:{PORT}", "--workers", "2")
        ov.join(lab.nat_host("mh", "no-inbound"), "mh", token)  # from mc: never direct
        ov.wait_connected(timeout=60)
        for src, dst in (("ma", "mb"), ("mc", "mh"), ("mb", "mc"), ("mb", "ma")):
            assert ov.ping(src, ov.address(dst), count=2).returncode == 0
        # prometheus on node mb, scraping the nodes over the overlay and the relay on its address
        mon = hosts["mb"]
        config = os.path.join(lab.tmp, "prometheus.yml")
        targets = [f"192.0.2.1:{PORT}", *(f"{ov.address(n)}:{PORT}" for n in hosts)]
        with open(config, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "scrape_configs:\n  - job_name: tunneld\n    static_configs:\n"
                    f"      - targets: {json.dumps(targets)}\n")
        prom = lab.spawn(mon.ns, "prometheus", f"--config.file={config}",
                         f"--storage.tsdb.path={os.path.join(lab.tmp, 'tsdb')}",
                         "--web.listen-address=127.0.0.1:9090", log=os.path.join(lab.tmp, "prometheus.log"))

        def query(promql):
            out = lab.nsexec(mon.ns, sys.executable, "-c", QUERY, "http://127.0.0.1:9090", promql, check=False,
                             timeout=20)
            if out.returncode:
                raise AssertionError(out.stderr.decode()[-500:])
            return json.loads(out.stdout)

        def ready():
            if prom.poll() is not None:
                raise AssertionError(f"prometheus exited: {lab.log('prometheus')[-2000:]}")
            return len(query('up{job="tunneld"} == 1')) == 4

        wait_for(ready, 60, interval=0.5, what="prometheus to scrape the relay and three nodes")
        yield ov, {n: f"{ov.address(n)}:{PORT}" for n in hosts}, query
    finally:
        lab.close()


def at_least(query, promql: str, floor: float) -> None:
    """The query's one series reaches floor within 20 s (every inner packet counted, the
    workers' too)."""
    def reached():
        got = list(values(query(promql)).values())
        return len(got) == 1 and got[0] >= floor

    wait_for(reached, 20, interval=0.5, what=f"{promql} >= {floor:.0f}")


def values(result) -> dict:
    """A query's result as {instance or label tuple: value}."""
    return {tuple(sorted((k, v) for k, v in r["metric"].items() if k not in ("__name__", "job"))): float(r["value"][1])
            for r in result}


def test_node_peer_bytes_and_packets_by_path_as_prometheus_stores_them(lab):
    ov, instance, query = lab
    sent, received = transfer(ov, "ma", "mb", 7800, 3 << 20)
    assert sent == received
    ma = instance["ma"]

    def scraped():
        got = values(query(f'tunneld_peer_sent_bytes_total{{instance="{ma}",peer="mb"}}'))
        return got and list(got.values())[0] >= 3 << 20 and got

    got = wait_for(scraped, 20, interval=0.5, what="ma's bytes to mb in prometheus")
    assert [dict(k)["path"] for k in got] == ["direct"]
    # the workers report each second, prometheus scrapes each second: what it has settles
    at_least(query, f'tunneld_peer_sent_packets_total{{instance="{ma}",peer="mb"}}', (3 << 20) / 1432)
    at_least(query, f'tunneld_peer_received_bytes_total{{instance="{instance["mb"]}",peer="ma"}}', 3 << 20)
    relayed = values(query(f'tunneld_peer_direct{{instance="{instance["mc"]}",peer="mh"}}'))
    assert list(relayed.values()) == [0.0]  # a cone NAT and no inbound path: through the relay
    rtt = values(query(f'tunneld_peer_rtt_seconds{{instance="{ma}"}}'))
    assert rtt and all(0 < v < 1 for v in rtt.values())
    mtu = values(query(f'tunneld_interface_mtu_bytes{{instance="{ma}"}}'))
    assert list(mtu.values()) == [float(ov.node_status("ma")["mtu"])]
    done = values(query('sum(tunneld_handshakes_total{with="peer",outcome=~"completed|answered"})'))
    assert list(done.values())[0] >= 2  # ma's and mb's, at least: ma asked, mb answered
    relay_done = values(query(f'tunneld_handshakes_total{{instance="{ma}",with="relay",outcome="completed"}}'))
    assert list(relay_done.values())[0] >= 1
    up = values(query(f'tunneld_relay_connected{{instance="{ma}"}}'))
    assert [(dict(k)["transport"], v) for k, v in up.items()] == [("udp", 1.0)]


def test_the_relays_series_and_the_readmes_queries(lab):
    ov, instance, query = lab
    relay = f"192.0.2.1:{PORT}"
    wait_for(lambda: values(query(f'tunneld_relay_nodes_connected{{instance="{relay}"}}')) ==
             {(("instance", relay),): 4.0}, 20, interval=0.5, what="four nodes connected in prometheus")
    assert values(query(f'tunneld_relay_nodes{{instance="{relay}"}}')) == {(("instance", relay),): 4.0}
    sessions = values(query(f'tunneld_relay_sessions{{instance="{relay}"}}'))
    assert {dict(k)["transport"]: v for k, v in sessions.items()}["udp"] >= 4
    sent, received = transfer(ov, "mc", "mh", 7801, 1 << 20)  # through the relay
    assert sent == received
    wait_for(lambda: sum(values(query(f'tunneld_relay_received_bytes_total{{instance="{relay}",node="mc"}}'))
                         .values()) >= 1 << 20, 20, interval=0.5, what="the relay's forwarded bytes")
    # the README's queries: relayed share of traffic, drops by reason, peers not direct
    def share():  # once prometheus has scraped mc after the transfer
        got = query('sum(rate(tunneld_peer_sent_bytes_total{path="relay"}[1m])) '
                    '/ sum(rate(tunneld_peer_sent_bytes_total[1m]))')
        return got and 0 < float(got[0]["value"][1]) <= 1

    wait_for(share, 20, interval=0.5, what="a relayed share of traffic above 0")
    assert query('sum by (reason) (rate(tunneld_drops_total[5m]))') is not None
    not_direct = {(r["metric"]["instance"], r["metric"]["peer"]) for r in query("tunneld_peer_direct == 0")}
    assert (instance["mc"], "mh") in not_direct
    assert (instance["ma"], "mb") not in not_direct


def test_a_dropped_datagram_shows_under_its_reason(lab):
    ov, instance, query = lab
    mb = instance["mb"]
    address, port = ov.node_status("mb")["relay"]["seen_as"].rsplit(":", 1)
    for _ in range(5):  # not a tunneld message at all, from an endpoint no peer uses
        ov.lab.nsexec(ov.nodes["ma"].ns, sys.executable, "-c", "import socket; socket.socket(2, 2).sendto("
                      f"b'\\xff' * 64, ('{address}', {port}))")
    wait_for(lambda: ov.node_status("mb")["drops"], 5, what="mb to count the drops")

    def counted():
        got = {dict(k)["reason"]: v for k, v in values(query(f'tunneld_drops_total{{instance="{mb}"}}')).items()}
        return all(got.get(r, -1) == n for r, n in ov.node_status("mb")["drops"].items()) and got

    wait_for(counted, 20, interval=0.5, what="mb's drops in prometheus as status counts them")


def test_tunneld_metrics_prints_the_same_series_once(lab):
    from prometheus_client.parser import text_string_to_metric_families
    ov, instance, query = lab
    out = ov.lab.nsexec(ov.nodes["ma"].ns, *tunneld_command(), "metrics", "--state-dir",
                        ov.nodes["ma"].state_dir)
    families = {f.name: f for f in text_string_to_metric_families(out.stdout.decode())}
    peers = {s.labels["peer"] for s in families["tunneld_peer_sent_bytes"].samples}
    assert peers == {"mb", "mc", "mh"}
    assert families["tunneld_info"].samples[0].labels["role"] == "node"


def test_what_is_not_a_scrape_gets_an_answer_or_a_closed_door_and_changes_nothing(lab):
    ov, instance, query = lab
    ns, addr = ov.nodes["mb"].ns, ov.address("ma")  # over the overlay, as prometheus scrapes

    def get(request):
        return ov.lab.nsexec(ns, sys.executable, "-c", GET, addr, str(PORT), request, timeout=20).stdout.decode()

    assert get("GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n").startswith("HTTP/1.1 200 OK")
    assert get("GET / HTTP/1.1\\r\\n\\r\\n").startswith("HTTP/1.1 404")
    assert get("POST /metrics HTTP/1.1\\r\\n\\r\\n").startswith("HTTP/1.1 405")
    assert get("GET /metrics HTTP/1.1\\r\\nX: " + "a" * 20000 + "\\r\\n\\r\\n") == ""  # too long: closed
    # a client that connects and says nothing holds nothing up, and is let go
    waited = float(ov.lab.nsexec(ns, sys.executable, "-c", SILENT, addr, str(PORT), timeout=30).stdout)
    assert waited < 10, waited  # metrics_http.TIMEOUT: 5 s
    assert ov.node_status("ma")["peers"]
    assert get("GET /metrics HTTP/1.0\\r\\n\\r\\n").startswith("HTTP/1.1 200 OK")


def test_a_metrics_address_that_is_not_host_port_is_refused_in_one_line(lab):
    ov, instance, query = lab
    out = ov.lab.nsexec(ov.relay.ns, *tunneld_command(), "serve", "--listen", "192.0.2.1:7001", "--state-dir",
                        os.path.join(ov.lab.tmp, "refused"), "--metrics", "nowhere", check=False)
    assert out.returncode != 0
    err = out.stderr.decode().strip()
    assert len(err.splitlines()) == 1 and "--metrics" in err, err


FREEBIND = r"""
import asyncio, os, socket, sys
from tunneld.net import metrics_http

async def main():
    server = await metrics_http.start(("198.18.50.1", 9100), lambda: {"role": "node", "name": "x", "peers": []})
    os.system("ip addr add 198.18.50.1/32 dev lo")  # as tunneld0 gets the node's address, later
    reader, writer = await asyncio.open_connection("198.18.50.1", 9100)
    writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
    print((await reader.read()).split(b"\r\n")[0].decode())
    server.close()

asyncio.run(main())
"""


def test_an_address_not_yet_on_the_host_is_served_once_it_is():
    """--metrics on the node's overlay address, before tunneld0 has it (a node's start)."""
    lab = Lab()
    try:
        ns = lab.add_namespace("mfree")
        out = lab.nsexec(ns, sys.executable, "-c", FREEBIND, timeout=30)
        assert out.stdout.decode().strip() == "HTTP/1.1 200 OK", out.stderr.decode()[-2000:]
    finally:
        lab.close()
