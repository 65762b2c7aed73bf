"""Endpoints: one formatter, one parser, and each takes what the other writes."""

import ipaddress

from hypothesis import given, strategies as st

from tunneld.proto import endpoint
from tunneld.proto.endpoint import RELAY


def test_udp_addresses_both_families():
    assert endpoint.format(("203.0.113.5", 4000)) == "203.0.113.5:4000"
    assert endpoint.format(("2001:db8::1", 7000)) == "[2001:db8::1]:7000"
    assert endpoint.parse("203.0.113.5:4000") == ("203.0.113.5", 4000)
    assert endpoint.parse("[2001:db8::1]:7000") == ("2001:db8::1", 7000)
    assert endpoint.parse("[2001:DB8:0::1]:7000") == ("2001:db8::1", 7000)  # one spelling of each address


def test_what_is_not_a_udp_address_parses_to_none():
    for bad in ("", "tcp:203.0.113.5:4000", "relay", "2001:db8::1:7000", "[203.0.113.5]:4000", "1.2.3:4",
                "1.2.3.4:0", "1.2.3.4:65536", "1.2.3.4:x", "a.b.c.d:5", "01.2.3.4:5", "1.2.3.4:4000\u00b2",
                "1.2.3.\u0665:4000", "203.0.113.5:\u0664\u0660\u0660\u0660", "[::1]:", "1.2.3.4:" + "9" * 70,
                None, 7000):
        assert endpoint.parse(bad) is None, bad


def test_the_relay_and_streams_format_by_name():
    class Stream:
        host, label = "198.51.100.7", "tcp:198.51.100.7:40001"

    assert endpoint.format(RELAY) == "relay" and endpoint.parse("relay") is None
    assert endpoint.format(Stream()) == "tcp:198.51.100.7:40001" and endpoint.parse(Stream.label) is None


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(1, 65535))
def test_every_parser_takes_what_every_formatter_writes(ip, port):
    ep = (str(ip), port)
    assert endpoint.parse(endpoint.format(ep)) == ep
    assert ipaddress.ip_address(endpoint.parse(endpoint.format(ep))[0]) == ip


DIGITS = "0123456789\u0660\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668\u0669\u00b2"
ADDRESS_LIKE = st.builds(lambda ip, port: f"{ip}:{port}" if ip.version == 4 else f"[{ip}]:{port}",
                         st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)),
                         st.text(alphabet=DIGITS, min_size=1, max_size=6))


@given(st.one_of(st.text(max_size=80), ADDRESS_LIKE))
def test_any_text_is_an_address_or_none(text):
    got = endpoint.parse(text)
    if got is not None:  # only ASCII text names an address, and it names one that formats back
        assert text.isascii() and endpoint.parse(endpoint.format(got)) == got and 0 < got[1] < 65536
