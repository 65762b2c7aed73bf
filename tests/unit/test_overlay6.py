"""control/overlay6.py: the IPv6 overlay's prefix and each node's address in it."""

import ipaddress
import random

import pytest

from tunneld.control.overlay6 import address4_of, address6, new_prefix, parse_prefix
from tunneld.errors import ConfigError

PREFIX = ipaddress.IPv6Network("fd3a:5e1c:92f0::/64")


def test_a_new_prefix_is_a_unique_local_64_from_the_random_source():
    rng = random.Random(7)
    a, b = new_prefix(rng.randbytes), new_prefix(rng.randbytes)
    assert a.prefixlen == b.prefixlen == 64 and a != b
    assert a.subnet_of(ipaddress.IPv6Network("fd00::/8"))
    assert new_prefix(lambda n: b"\x11" * n) == ipaddress.IPv6Network("fd11:1111:1111::/64")


def test_a_nodes_address_carries_its_ipv4_address_and_back():
    v6 = address6(PREFIX, "100.64.0.7")
    assert v6 == ipaddress.IPv6Address("fd3a:5e1c:92f0::6440:7")
    assert address4_of(PREFIX, v6.packed) == ipaddress.IPv4Address("100.64.0.7").packed
    assert address4_of(PREFIX, str(v6)) == bytes([100, 64, 0, 7])
    assert address6(ipaddress.IPv6Network("2001:db8:0:1::/96"), "100.127.255.254") == \
        ipaddress.IPv6Address("2001:db8:0:1::647f:fffe")


@pytest.mark.parametrize("other", ["fd3a:5e1c:92f1::6440:7", "fd3a:5e1c:92f0::1:6440:7", "2001:db8::1",
                                   "fd3a:5e1c:92f0:0:1::"])
def test_an_address_outside_the_prefix_or_its_32_bits_carries_nothing(other):
    assert address4_of(PREFIX, other) is None


def test_every_ipv4_address_maps_one_to_one():
    rng = random.Random(3)
    for _ in range(2000):
        v4 = ipaddress.IPv4Address(rng.getrandbits(32))
        assert address4_of(PREFIX, address6(PREFIX, v4).packed) == v4.packed


@pytest.mark.parametrize("text, says", [
    ("fd3a::/120", "too small"), ("not a net", "not an IPv6 CIDR"), ("fd3a::1/64", "not an IPv6 CIDR"),
    ("ff02::/16", "reserved"), ("fe80::/64", "reserved"), ("::ffff:0:0/96", "reserved"), ("::/64", "reserved"),
    ("100.64.0.0/10", "not an IPv6 CIDR")])
def test_a_bad_network6_is_refused_in_one_line(text, says):
    with pytest.raises(ConfigError) as e:
        parse_prefix(text)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_good_network6():
    assert parse_prefix("fd3a:5e1c:92f0::/64") == PREFIX
    assert parse_prefix("2001:db8:1::/96").prefixlen == 96
