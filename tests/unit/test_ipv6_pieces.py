"""IPv6, pure: several listen addresses, and Happy Eyeballs' order."""

import pytest

from tunneld.config import parse_listen
from tunneld.control.eyeballs import order
from tunneld.errors import ConfigError
from tunneld.proto import endpoint


def test_several_listen_addresses_ipv6_in_brackets():
    assert parse_listen("203.0.113.1:7443,[2001:db8::1]:7443") == (("203.0.113.1", 7443), ("2001:db8::1", 7443))
    assert parse_listen("[::]:7443") == (("0.0.0.0", 7443), ("::", 7443))  # every address, both families
    assert parse_listen("192.0.2.1:7443,[::]:7443") == (("192.0.2.1", 7443), ("::", 7443))
    assert parse_listen("localhost:7000") == (("127.0.0.1", 7000),)  # a name: its IPv4 address, as before
    assert parse_listen(" 192.0.2.1:7000 ") == (("192.0.2.1", 7000),)
    # every parser takes what every formatter writes
    for ep in parse_listen("203.0.113.1:7443,[2001:DB8::1]:7443"):
        assert endpoint.parse(endpoint.format(ep)) == ep


@pytest.mark.parametrize("text, says", [
    ("2001:db8::1:7443", "not HOST:PORT"), ("relay.invalid:7443", "cannot resolve"),
    ("192.0.2.1:7000,198.51.100.1:7000", "two IPv4 addresses"), ("[2001:db8::1]:1,[2001:db8::2]:1", "two IPv6"),
    ("[::ffff:192.0.2.1]:7000", "as such"),
    ("192.0.2.1:7000,192.0.2.1:7000", "twice"), ("[2001:db8::1]", "not HOST:PORT"), ("", "needs HOST:PORT"),
    ("192.0.2.1:70000", "1-65535")])
def test_a_bad_listen_is_refused_in_one_line(text, says):
    with pytest.raises(ConfigError) as e:
        parse_listen(text)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_happy_eyeballs_order():
    v6a, v6b, v4a, v4b = ("2001:db8::1", 7000), ("2001:db8::2", 7000), ("192.0.2.1", 7000), ("192.0.2.2", 7000)
    assert order([v4a, v4b, v6a, v6b]) == [v6a, v4a, v6b, v4b]  # IPv6 first, families interleaved
    assert order([v4a, v6a, v4a]) == [v6a, v4a]
    assert order([v4a, v4b]) == [v4a, v4b]
    assert order([v4a, v6a, v6b], last_good=v4a) == [v4a, v6a, v6b]  # what worked last, first
    assert order([v4a], last_good=v6a) == [v4a]
