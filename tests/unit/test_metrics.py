"""metrics.py: a status snapshot as Prometheus families (the lab test scrapes the real thing)."""

from prometheus_client.parser import text_string_to_metric_families

from tunneld.metrics import render

NODE = {"role": "node", "name": "a", "protocol": "0.4", "interface": "tunneld0", "mtu": 1432,
        "relay": {"endpoint": "192.0.2.1:7000", "connected": True, "transport": "tcp", "rtt_ms": 2.5},
        "peers": [{"name": "b", "path": "direct", "rtt_ms": 0.5, "mtu": 1432, "session": True,
                   "rx_bytes": 10, "tx_bytes": 20, "rx_packets": 1, "tx_packets": 2},
                  {"name": "c", "path": "relay", "rtt_ms": None, "mtu": None, "session": False,
                   "rx_bytes": 0, "tx_bytes": 0}],
        "counters": {"path_changes": 3, "peer_handshakes_sent": 2, "peer_handshakes_completed": 1},
        "drops": {"replay": 4, "handshake_replay": 5, "handshake_invalid": 1},
        "offload": {"aead": "openssl", "express": True, "udp_gso_sends": 7},
        "workers": [{"worker": 0}, {"worker": 1}]}
RELAY = {"role": "relay", "listen": "192.0.2.1:7000", "protocol": "0.4", "sessions": 3, "tcp_streams": 1,
         "nodes": [{"name": "a", "connected": True, "home": "192.0.2.1:7000", "rx_bytes": 5, "tx_bytes": 6,
                    "rx_packets": 1},
                   {"name": "b", "connected": True, "home": "192.0.2.2:7000"},
                   {"name": "c", "connected": False, "home": None}],
         "relays": [{"self": True, "health": "up"}, {"self": False, "health": "up"}, {"self": False, "health": "down"}],
         "counters": {"cookies_sent": 2}, "drops": {}, "offload": {}}


def samples(status) -> dict:
    out = {}
    for family in text_string_to_metric_families(render(status).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_a_nodes_peers_counters_and_gauges():
    got = samples(NODE)
    assert got[("tunneld_peer_sent_bytes_total", (("path", "direct"), ("peer", "b")))] == 20
    assert got[("tunneld_peer_sent_packets_total", (("path", "direct"), ("peer", "b")))] == 2
    assert got[("tunneld_peer_received_packets_total", (("path", "relay"), ("peer", "c")))] == 0
    assert got[("tunneld_peer_rtt_seconds", (("path", "direct"), ("peer", "b")))] == 0.0005
    assert ("tunneld_peer_rtt_seconds", (("path", "relay"), ("peer", "c"))) not in got  # unknown: absent, not 0
    assert got[("tunneld_peer_direct", (("peer", "c"),))] == 0
    assert got[("tunneld_relay_connected", (("relay", "192.0.2.1:7000"), ("transport", "tcp")))] == 1
    assert got[("tunneld_drops_total", (("reason", "replay"),))] == 4
    assert got[("tunneld_events_total", (("kind", "path_changes"),))] == 3
    assert got[("tunneld_offload_total", (("kind", "udp_gso_sends"),))] == 7
    assert ("tunneld_offload_total", (("kind", "express"),)) not in got  # a flag, not a count
    assert got[("tunneld_interface_mtu_bytes", (("interface", "tunneld0"),))] == 1432
    assert got[("tunneld_sessions", ())] == 1 and got[("tunneld_workers", ())] == 2
    assert got[("tunneld_handshakes_total", (("outcome", "completed"), ("with", "peer")))] == 1
    assert got[("tunneld_handshakes_total", (("outcome", "refused"), ("with", "peer")))] == 6
    assert got[("tunneld_handshakes_total", (("outcome", "sent"), ("with", "relay")))] == 0
    assert not any(name.startswith("tunneld_policy") for name, _ in got)  # no policy, no such series


def test_a_nodes_policy_counts_by_rule():
    policy = {"rules": [{"rule": 1, "packets": 7}, {"rule": 2, "packets": 0}], "denied_packets": 3,
              "denied": [{"from": "b", "proto": "tcp", "port": 22, "packets": 3}]}
    got = samples({**NODE, "policy": policy, "drops": {"policy_denied": 3}})
    assert got[("tunneld_policy_allowed_packets_total", (("rule", "1"),))] == 7
    assert got[("tunneld_policy_allowed_packets_total", (("rule", "2"),))] == 0
    assert got[("tunneld_drops_total", (("reason", "policy_denied"),))] == 3


def test_a_relays_nodes_sessions_and_peers():
    got = samples(RELAY)
    assert got[("tunneld_relay_nodes", ())] == 3
    assert got[("tunneld_relay_nodes_connected", ())] == 1  # b is connected, but to the other relay
    assert got[("tunneld_relay_received_bytes_total", (("node", "a"),))] == 5
    assert got[("tunneld_relay_sessions", (("transport", "tcp"),))] == 1
    assert got[("tunneld_relay_sessions", (("transport", "udp"),))] == 2
    assert got[("tunneld_relay_peers_up", ())] == 1
    assert got[("tunneld_events_total", (("kind", "cookies_sent"),))] == 2
    assert got[("tunneld_info", (("name", "192.0.2.1:7000"), ("protocol", "0.4"), ("role", "relay")))] == 1


def test_published_services_on_relay_and_node():
    row = {"name": "web", "protocol": "tcp", "connections": 3, "flows": 0, "refused": 1, "errors": 2,
           "bytes_in": 100, "bytes_out": 2000}
    got = samples({**RELAY, "published": [{**row, "active": 1}]})
    key = (("protocol", "tcp"), ("service", "web"))
    assert got[("tunneld_published_connections_total", key)] == 3
    assert got[("tunneld_published_bytes_total", (("direction", "out"),) + key)] == 2000
    assert got[("tunneld_published_bytes_total", (("direction", "in"),) + key)] == 100
    assert got[("tunneld_published_active", key)] == 1
    assert got[("tunneld_published_refused_total", key)] == 1 and got[("tunneld_published_errors_total", key)] == 2
    node = samples({**NODE, "published": [row]})
    assert node[("tunneld_published_connections_total", key)] == 3
    assert ("tunneld_published_active", key) not in node
    assert not any(name.startswith("tunneld_published") for name, _ in samples(NODE))
