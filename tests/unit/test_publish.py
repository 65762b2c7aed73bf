"""publish.py: the relay's [[publish]] tables and allow-ports, checked."""

import pytest

from tunneld.publish import Publish, PublishError, parse, parse_allow

ALLOW = parse_allow(["18000-18999", "2222", 6000])


def test_the_documented_form():
    got = parse([{"name": "web", "node": "edge-1", "port": 8080, "remote-port": 18080, "protocol": "tcp",
                  "proxy-protocol": 2},
                 {"name": "dns", "node": "edge-1", "port": 53, "remote-port": 18053, "protocol": "udp",
                  "idle-timeout": 30}], ALLOW, 7000)
    assert got == (Publish("web", "edge-1", 8080, 18080, "tcp", 2),
                   Publish("dns", "edge-1", 53, 18053, "udp", 0, idle_timeout=30.0))
    assert ALLOW == ((2222, 2222), (6000, 6000), (18000, 18999))


@pytest.mark.parametrize("tables, says", [
    ([{"name": "a", "node": "n", "port": 1, "remote-port": 19000}], "outside allow-ports"),
    ([{"name": "a", "node": "n", "port": 1, "remote-port": 18000, "porto": "tcp"}], "unknown key 'porto'"),
    ([{"name": "A!", "node": "n", "port": 1, "remote-port": 18000}], "lower-case"),
    ([{"name": "a", "port": 1, "remote-port": 18000}], "node names"),
    ([{"name": "a", "node": "n", "port": 0, "remote-port": 18000}], "port 0"),
    ([{"name": "a", "node": "n", "port": 1, "remote-port": 18000, "protocol": "sctp"}], "tcp or udp"),
    ([{"name": "a", "node": "n", "port": 1, "remote-port": 18000, "proxy-protocol": 1}], "proxy-protocol 1"),
    ([{"name": "a", "node": "n", "port": 1, "remote-port": 18000, "protocol": "udp", "proxy-protocol": 2}],
     "for tcp services"),
    ([{"name": "a", "node": "n", "port": 1, "remote-port": 18000},
      {"name": "b", "node": "n", "port": 2, "remote-port": 18000}], "already taken by publish 'a'"),
    ([{"name": "a", "node": "n", "port": 1, "remote-port": 18000},
      {"name": "a", "node": "n", "port": 2, "remote-port": 18001}], "given twice"),
])
def test_mistakes_are_refused_in_one_line(tables, says):
    with pytest.raises(PublishError) as e:
        parse(tables, ALLOW, 7000)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_tcp_and_a_udp_service_may_share_a_port_number():
    got = parse([{"name": "a", "node": "n", "port": 53, "remote-port": 2222},
                 {"name": "b", "node": "n", "port": 53, "remote-port": 2222, "protocol": "udp"}], ALLOW, 7000)
    assert len(got) == 2


def test_the_relays_own_port_and_bad_ranges():
    with pytest.raises(PublishError):
        parse([{"name": "a", "node": "n", "port": 1, "remote-port": 7000}], parse_allow(["1-65535"]), 7000)
    for bad in ("x", "0-10", "10-5", "70000"):
        with pytest.raises(PublishError):
            parse_allow([bad])
