"""Publishing between the real relay and node engines (engine/publish_relay.py and
publish_node.py) on the simulated network: what the relay asks of a node, what the node
serves, and what each refuses. The namespace lab (tests/integration/test_publish.py)
carries real connections; this holds the engines to the rules exactly."""

from collections import Counter

from tunneld.engine.publish_node import Served, ServeTcp, ServeUdp
from tunneld.engine.publish_relay import OPEN_TIMEOUT, PUB_REFRESH, RelayPublishing
from tunneld.proto.stream import work_frame
from tunneld.publish import Publish

from .simnet import SimNet

WEB = Publish("web", "alpha", 8080, 18080)
DNS = Publish("dns", "alpha", 53, 18053, "udp", idle_timeout=5.0)
CLIENT = ("198.51.100.7", 5555)


def setup(*entries):
    net = SimNet()
    net.add_node("alpha", nat="blocked")
    net.add_node("bravo", nat="blocked")
    out = {"delivered": [], "refused": []}
    pub = RelayPublishing(net.relay, lambda name, client, data: out["delivered"].append((name, client, data)),
                          out["refused"].append)
    net.relay.publishing = pub
    net.advance(3)
    pub.configure(entries)
    pub.tick(net.now)
    net.deliver()
    return net, pub, out


def test_the_node_is_told_what_is_published_and_serves_only_that():
    net, pub, out = setup(WEB, DNS)
    alpha = net.nodes["alpha"]
    assert [type(e) for e in net.ios["alpha"].serving] == [Served]
    assert alpha.publishing.by_relay[""] == {"web": ("tcp", 8080, 60.0), "dns": ("udp", 53, 5.0)}
    assert net.nodes["bravo"].publishing.by_relay.get("", {}) == {}  # nothing of bravo's
    # a TCP client: the node is asked to open a work connection, with a one-time k
    conn_id = pub.tcp_open("web", "198.51.100.7:5555", "192.0.2.1:18080", net.now)
    net.deliver()
    opened = net.ios["alpha"].serving[-1]
    assert isinstance(opened, ServeTcp) and (opened.conn_id, opened.port, opened.name) == (conn_id, 8080, "web")
    assert pub.work(work_frame(conn_id, opened.k)) == (conn_id, opened.k, "web")
    assert pub.work(work_frame(conn_id, opened.k)) is None  # once only
    assert pub.stats["web"]["connections"] == 1 and pub.stats["web"]["active"] == 1
    # a UDP flow: there and back
    pub.udp_in("dns", CLIENT, b"query", net.now)
    net.deliver()
    datagram = net.ios["alpha"].serving[-1]
    assert isinstance(datagram, ServeUdp) and (datagram.port, datagram.data) == (53, b"query")
    alpha.relay.control({"t": "udp", "f": datagram.flow, "p": 0, "d": b"answer"})
    net.deliver()
    assert out["delivered"] == [("dns", CLIENT, b"answer")]


def test_a_work_frame_without_k_or_for_nothing_is_refused_and_counted():
    net, pub, _ = setup(WEB)
    conn_id = pub.tcp_open("web", "198.51.100.7:5555", "192.0.2.1:18080", net.now)
    net.deliver()
    k = net.ios["alpha"].serving[-1].k
    assert pub.work(work_frame(conn_id, bytes(32))) is None
    assert pub.work(work_frame(conn_id + 1, k)) is None
    assert pub.work(b"\x0b" + bytes(10)) is None
    assert net.relay.drops["work_unproven"] == 3
    assert pub.work(work_frame(conn_id, k)) is not None  # the real one still works


def test_a_node_answers_only_its_own_flows():
    net, pub, out = setup(DNS)
    pub.udp_in("dns", CLIENT, b"query", net.now)
    net.deliver()
    flow = net.ios["alpha"].serving[-1].flow
    net.nodes["bravo"].relay.control({"t": "udp", "f": flow, "p": 0, "d": b"forged"})  # not bravo's service
    net.nodes["alpha"].relay.control({"t": "udp", "f": flow + 7, "p": 0, "d": b"made up"})
    net.deliver()
    assert out["delivered"] == []
    assert net.relay.drops["publish_unknown_flow"] == 2


def test_the_node_refuses_what_was_not_published_to_it():
    net, pub, _ = setup(WEB)
    before = len(net.ios["alpha"].serving)
    member = next(m for m in net.relay.members.values() if m.name == "alpha")
    net.relay._control(member, {"t": "open", "id": 9, "port": 22, "k": bytes(32), "src": "x:1", "dst": "y:2", "pp": 0,
                                "s": "web"})
    net.deliver()
    assert len(net.ios["alpha"].serving) == before
    assert net.nodes["alpha"].drops["publish_not_served"] == 1


def test_limits_idle_flows_and_a_node_that_never_comes_back():
    net, pub, out = setup(Publish("one", "alpha", 8080, 18080, max_connections=1), DNS)
    first = pub.tcp_open("one", "a:1", "b:2", net.now)
    assert first is not None and pub.tcp_open("one", "a:3", "b:2", net.now) is None  # full
    assert pub.stats["one"]["refused"] == 1
    net.advance(OPEN_TIMEOUT + 1)  # the node never opened the work connection
    pub.tick(net.now)
    assert out["refused"] == [first] and pub.stats["one"]["active"] == 0
    pub.udp_in("dns", CLIENT, b"q", net.now)
    assert pub.stats["dns"]["active"] == 1
    net.advance(6)
    pub.tick(net.now)
    assert pub.stats["dns"]["active"] == 0 and not pub.flows


def test_pub_is_repaired_after_a_loss_and_a_removed_service_is_unsaid():
    net, pub, _ = setup(WEB)
    alpha = net.nodes["alpha"]
    alpha.publishing.by_relay = {}  # as if the pub had been lost
    net.advance(PUB_REFRESH + 1)
    pub.tick(net.now)
    net.deliver()
    assert "web" in alpha.publishing.by_relay[""]
    pub.configure(())
    pub.tick(net.now)
    net.deliver()
    assert alpha.publishing.by_relay[""] == {}
    assert pub.tcp_open("web", "a:1", "b:2", net.now) is None


def test_a_node_that_does_not_know_publish_is_never_asked():
    from tunneld.proto.version import Hello
    net, pub, _ = setup(WEB, DNS)
    member = next(m for m in net.relay.members.values() if m.name == "alpha")
    member.hello = Hello(2, 1, frozenset({"hello", "ep-proof", "lanes"}))  # a 0.4 node
    drops = Counter(net.nodes["alpha"].drops)
    assert pub.tcp_open("web", "a:1", "b:2", net.now) is None
    pub.udp_in("dns", CLIENT, b"x", net.now)
    net.advance(PUB_REFRESH + 1)
    pub.tick(net.now)
    net.deliver()
    assert pub.stats["web"]["refused"] == 1 and pub.stats["dns"]["refused"] == 1
    assert net.nodes["alpha"].drops == drops  # nothing it would not understand reached it
    assert not any(row["node_connected"] for row in pub.status())


def test_a_pub_or_open_naming_a_relay_the_node_does_not_know_is_refused():
    from tunneld.engine.publish_node import NodePublishing
    effects, drops = [], Counter()
    node = NodePublishing(effects, drops, lambda: ["192.0.2.1:7000", "192.0.2.2:7000"])
    node.receive({"t": "pub", "s": [["web", "tcp", 8080, 60]], "r": "192.0.2.2:7000"}, 0.0)
    node.receive({"t": "pub", "s": [["evil", "tcp", 22, 60]], "r": "198.51.100.66:7000"}, 0.0)
    assert drops["publish_not_served"] == 1 and [s["name"] for s in node.status()] == ["web"]
    opened = {"t": "open", "id": 1, "port": 8080, "k": bytes(32), "src": "a:1", "dst": "b:2", "pp": 0, "s": "web"}
    node.receive({**opened, "at": "198.51.100.66:7000"}, 1.0)  # a work connection to a stranger: no
    node.receive(opened, 1.0)  # the home relay did not publish web: no
    assert drops["publish_not_served"] == 3 and not any(isinstance(e, ServeTcp) for e in effects)
    node.receive({**opened, "at": "192.0.2.2:7000"}, 1.0)
    assert effects[-1].at == "192.0.2.2:7000" and effects[-1].name == "web"
    node.receive({"t": "pub", "s": [], "r": "192.0.2.1:7000"}, 100.0)  # relay 2's pubs stopped 100 s ago
    assert node.status() == []


def test_ids_fit_the_wire_whatever_the_random_source_says():
    from tunneld.proto import messages
    net, pub, _ = setup(WEB)
    net.relay.env = net.relay.env.__class__(net.relay.env.monotonic, net.relay.env.wall_ns, lambda n: b"\xff" * n)
    highest = RelayPublishing(net.relay, None, None)
    highest.configure((WEB,))
    conn_id = highest._next_id()
    msg = {"t": "open", "id": conn_id, "port": 8080, "k": bytes(32), "src": "a:1", "dst": "b:2", "pp": 0, "s": "web"}
    assert messages.decode_control(messages.encode(msg))["id"] == conn_id
