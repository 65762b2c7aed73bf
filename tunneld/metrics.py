"""Prometheus metrics: what `tunneld status --json` says, in Prometheus's text format.

The daemons keep their counters as they always have (per peer, per node, per drop
reason); nothing here runs per packet. A scrape of `--metrics HOST:PORT` (net/metrics_http.py)
or `tunneld metrics` takes one status snapshot and renders it: counters as `_total`, units
in the names, as Prometheus's naming guide asks.

  families(status)   the metric families of a node's or a relay's status
  render(status)     them as the text exposition format (bytes)
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _counter(name: str, doc: str, labels=()) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def _gauge(name: str, doc: str, labels=()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _common(status: dict, role: str) -> list:
    drops = _counter("tunneld_drops", "Packets and messages dropped, by reason (as in tunneld status).", ["reason"])
    for reason, n in sorted(status.get("drops", {}).items()):
        drops.add_metric([reason], n)
    events = _counter("tunneld_events", "Counted events (handshakes sent, path changes, rekeys...), by kind.",
                      ["kind"])
    for kind, n in sorted(status.get("counters", {}).items()):
        events.add_metric([kind], n)
    offload = status.get("offload", {})
    batching = _counter("tunneld_offload", "Offload and batching at work (super-packets, trains), by kind.",
                        ["kind"])
    for kind, n in sorted(offload.items()):
        if isinstance(n, int) and not isinstance(n, bool):
            batching.add_metric([kind], n)
    up = _gauge("tunneld_info", "1, with this daemon's role, name and protocol as labels.",
                ["role", "name", "protocol"])
    up.add_metric([role, str(status.get("name") or status.get("listen") or ""), str(status.get("protocol") or "")], 1)
    workers = _gauge("tunneld_workers", "Processes carrying the data, the daemon's own included.")
    workers.add_metric([], max(1, len(status.get("workers") or ())))
    return [up, drops, events, batching, workers]


def _node(status: dict) -> list:
    out = _common(status, "node")
    labels = ["peer", "path"]
    rx = _counter("tunneld_peer_received_bytes", "Bytes of inner packets received from a peer.", labels)
    tx = _counter("tunneld_peer_sent_bytes", "Bytes of inner packets sent to a peer.", labels)
    rxp = _counter("tunneld_peer_received_packets", "Inner packets received from a peer.", labels)
    txp = _counter("tunneld_peer_sent_packets", "Inner packets sent to a peer.", labels)
    rtt = _gauge("tunneld_peer_rtt_seconds", "Round trip to a peer on its path, from the last probe.", labels)
    mtu = _gauge("tunneld_peer_path_mtu_bytes", "The path MTU to a peer.", labels)
    online = _gauge("tunneld_peer_direct", "1 where the peer is reached directly, 0 through the relay.", ["peer"])
    session = _gauge("tunneld_peer_session", "1 where the node holds a session with the peer.", ["peer"])
    for p in status.get("peers", ()):
        key = [p["name"], p["path"]]
        rx.add_metric(key, p.get("rx_bytes", 0))
        tx.add_metric(key, p.get("tx_bytes", 0))
        rxp.add_metric(key, p.get("rx_packets", 0))
        txp.add_metric(key, p.get("tx_packets", 0))
        if p.get("rtt_ms") is not None:
            rtt.add_metric(key, p["rtt_ms"] / 1000)
        if p.get("mtu"):
            mtu.add_metric(key, p["mtu"])
        online.add_metric([p["name"]], 1 if p["path"] == "direct" else 0)
        session.add_metric([p["name"]], 1 if p.get("session") else 0)
    relay = status.get("relay") or {}
    connected = _gauge("tunneld_relay_connected", "1 while the node's relay link is up, by transport.",
                       ["relay", "transport"])
    connected.add_metric([str(relay.get("endpoint") or ""), str(relay.get("transport") or "")],
                         1 if relay.get("connected") else 0)
    relay_rtt = _gauge("tunneld_relay_rtt_seconds", "Round trip to the node's relay.")
    if relay.get("rtt_ms") is not None:
        relay_rtt.add_metric([], relay["rtt_ms"] / 1000)
    iface = _gauge("tunneld_interface_mtu_bytes", "The MTU of the node's TUN interface.", ["interface"])
    if status.get("mtu"):
        iface.add_metric([str(status.get("interface") or "")], status["mtu"])
    handshakes = _counter("tunneld_handshakes", "Handshakes with peers and the relay, by outcome: sent, "
                          "completed (ours answered), answered (theirs), refused (dropped, by any handshake_ "
                          "reason).", ["with", "outcome"])
    counters = status.get("counters", {})
    for side in ("peer", "relay"):
        for outcome in ("sent", "completed", "answered"):
            if side == "peer" or outcome != "answered":
                handshakes.add_metric([side, outcome], counters.get(f"{side}_handshakes_{outcome}", 0))
    handshakes.add_metric(["peer", "refused"], sum(n for reason, n in status.get("drops", {}).items()
                                                    if reason.startswith("handshake_")))
    peers = _gauge("tunneld_peers", "Peers the node knows.")
    peers.add_metric([], len(status.get("peers", ())))
    sessions = _gauge("tunneld_sessions", "Peers the node holds a session with.")
    sessions.add_metric([], sum(1 for p in status.get("peers", ()) if p.get("session")))
    return out + [rx, tx, rxp, txp, rtt, mtu, online, session, connected, relay_rtt, iface, handshakes, peers,
                  sessions] + _policy(status.get("policy")) + _published(status.get("published"))


def _policy(policy: dict | None) -> list:
    """A node's policy (policy.py): the packets each rule admitted. What it denied is
    tunneld_drops_total{reason="policy_denied"}; by source and port, status says."""
    if policy is None:
        return []
    allowed = _counter("tunneld_policy_allowed_packets", "Packets that a policy rule admitted (those not "
                       "answering a flow the node opened), by rule: its place in the policy file.", ["rule"])
    for rule in policy.get("rules", ()):
        allowed.add_metric([str(rule["rule"])], rule["packets"])
    return [allowed]


def _relay(status: dict) -> list:
    out = _common(status, "relay")
    nodes = status.get("nodes", ())
    known = _gauge("tunneld_relay_nodes", "Nodes the network knows.")
    known.add_metric([], len(nodes))
    online = _gauge("tunneld_relay_nodes_connected", "Nodes connected to this relay.")
    online.add_metric([], sum(1 for n in nodes if n.get("connected") and n.get("home") in (None, status.get("listen"))))
    rx = _counter("tunneld_relay_received_bytes", "Bytes this relay received from a node.", ["node"])
    tx = _counter("tunneld_relay_sent_bytes", "Bytes this relay sent to a node.", ["node"])
    rxp = _counter("tunneld_relay_received_packets", "Datagrams and messages this relay received from a node.",
                   ["node"])
    for n in nodes:
        rx.add_metric([n["name"]], n.get("rx_bytes", 0))
        tx.add_metric([n["name"]], n.get("tx_bytes", 0))
        rxp.add_metric([n["name"]], n.get("rx_packets", 0))
    sessions = _gauge("tunneld_relay_sessions", "Sessions the relay holds with nodes, by transport.", ["transport"])
    tcp = status.get("tcp_streams", 0)
    sessions.add_metric(["udp"], max(0, status.get("sessions", 0) - tcp))
    sessions.add_metric(["tcp"], tcp)
    relays = _gauge("tunneld_relay_peers_up", "Other relays of the network this relay sees up.")
    relays.add_metric([], sum(1 for r in status.get("relays", ()) if not r.get("self") and r.get("health") == "up"))
    return out + [known, online, rx, tx, rxp, sessions, relays] + _published(status.get("published"))


def _published(rows) -> list:
    """Published services (publish add, [[publish]]): on the relay, each one's traffic from
    the clients; on a node, what its services got. in: client to service; out: back."""
    if not rows:
        return []
    labels = ["service", "protocol"]
    conns = _counter("tunneld_published_connections", "Connections (TCP) and flows (UDP) a published service "
                     "carried.", labels)
    refused = _counter("tunneld_published_refused", "Connections and flows refused: node away, service full "
                       "or not listening.", labels)
    errors = _counter("tunneld_published_errors", "Connections cut, and datagrams lost, of a published service.",
                      labels)
    moved = _counter("tunneld_published_bytes", "Bytes a published service carried, by direction (in: from "
                     "the clients).", labels + ["direction"])
    active = _gauge("tunneld_published_active", "Connections and flows open now (the relay's).", labels)
    for r in rows:
        key = [r["name"], r["protocol"]]
        conns.add_metric(key, r["connections"] + r["flows"])
        refused.add_metric(key, r["refused"])
        errors.add_metric(key, r["errors"])
        moved.add_metric(key + ["in"], r["bytes_in"])
        moved.add_metric(key + ["out"], r["bytes_out"])
        if "active" in r:
            active.add_metric(key, r["active"])
    return [conns, refused, errors, moved, active]


def families(status: dict) -> list:
    return _relay(status) if status.get("role") == "relay" else _node(status)


class _Snapshot(Collector):
    def __init__(self, status: dict):
        self.status = status

    def collect(self):
        return iter(families(self.status))


def render(status: dict) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(status))
    return generate_latest(registry)
