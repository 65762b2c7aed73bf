"""Endpoints: where a message comes from, or where it goes.

An endpoint is one of three things, told apart without allocating on the hot path:

  (host, port)   a UDP address, the tuple the socket gives and takes; an IPv6 host
                 holds colons
  RELAY          on a node: its relay, over whichever transport is up
  a stream       on the relay: one node's TCP connection, an object with `host` (its
                 peer's address) and `label` ("tcp:HOST:PORT")

Endpoints travel as text in control messages (a node's address as the relay sees it,
its LAN addresses). format() is the only writer of that text and parse() its only
reader, so every parser takes what every formatter writes:

  ("192.0.2.1", 7000)      <->  "192.0.2.1:7000"
  ("2001:db8::1", 7000)    <->  "[2001:db8::1]:7000"
  RELAY                    ->   "relay"
  a stream                 ->   its label, "tcp:192.0.2.7:40001"
"""

from __future__ import annotations

import ipaddress


class _Relay:
    """The sentinel 'the relay, over whichever transport is up'."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "RELAY"


RELAY = _Relay()

MAX_TEXT = 64  # the longest endpoint text a control message may carry


def format(ep) -> str:  # noqa: A001 - the module's one formatter, used as endpoint.format
    if ep.__class__ is tuple:
        host, port = ep[0], ep[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if ep is RELAY:
        return "relay"
    return getattr(ep, "label", "tcp")


def parse(text) -> tuple[str, int] | None:
    """The UDP address that format() wrote, or None for anything else (a stream's label,
    a name, digits of other scripts, a port out of range)."""
    if not isinstance(text, str) or not text.isascii() or len(text) > MAX_TEXT:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdecimal() or not 0 < int(port) < 65536:
        return None
    if host.startswith("[") and host.endswith("]"):
        try:
            return (str(ipaddress.IPv6Address(host[1:-1])), int(port))
        except ValueError:
            return None
    try:
        return (str(ipaddress.IPv4Address(host)), int(port))
    except ValueError:
        return None


def reachable(ep) -> bool:
    """May a node send a peer's traffic to this UDP address? Not to a loopback, link-local,
    multicast, broadcast or unspecified one: a member names its candidates, and must not
    point its peers' traffic at their own host or their whole link."""
    ip = ipaddress.ip_address(ep[0])
    return not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified
                or ip == ipaddress.IPv4Address("255.255.255.255"))


def source(ep) -> tuple[object, bytes]:
    """(host, host and port as bytes) of an endpoint that sent us something. The host gets a
    responder's rate limit (a NAT holds many nodes behind one address); host and port get
    the cookie (proto/cookie.py)."""
    if ep.__class__ is tuple:
        return ep[0], format(ep).encode()
    host = getattr(ep, "host", "tcp")
    return host, getattr(ep, "label", host).encode()
