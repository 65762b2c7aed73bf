"""A node's policy file: what its peers may open towards it, as nftables rules. No I/O here.

    [groups]
    workers = ["w1", "w2", "100.64.9.0/24"]

    [[allow]]
    from = ["a", "group:workers", "100.64.0.0/16"]   # node names, groups, prefixes; "*" any peer
    ports = ["tcp/10250", "udp/8472", "tcp/30000-32767", "icmp"]   # left out: everything
    to = ["198.18.1.0/24"]   # optional: only towards these (our address, our advertised prefixes)

A node name covers the node's IPv4 and IPv6 overlay addresses alike, "icmp" covers ICMPv6 as
well, and "*" any source of either family; a prefix (in from or to) covers its own family
only, so a rule from = ["100.64.0.0/10"] admits no IPv6.

Once a node has a policy, a packet that comes out of the overlay (in on tunneld0, to the node
or through it into a prefix it advertises) is admitted if it belongs to a flow the node (or
the network behind it) opened, including the ICMP errors about such a flow, or if an [[allow]]
rule matches it; everything else is dropped and counted, by source, protocol and port.

Why the kernel does it (nftables and its connection tracking) rather than the data path:
"answers to what we opened" is state that spans both directions, every worker and the
express path; conntrack already keeps it, for TCP and UDP alike, and the data path stays as
it is. What makes a source address mean something is the data path's inner-source check: a
peer's packets carry its own overlay address, or one of the prefixes approved for it.

A node name stands for that node's overlay address and the prefixes we accept from it, as
the relay's directory says (under the network lock, only for keys the lock endorses). A name
not in the directory yet matches nothing until it appears; status says so.

  parse(text, source)         the file, checked: Policy, or PolicyError naming the problem
  ruleset(policy, peers, ifname)  the nftables table that enforces it, given the peers by name
  counters(listing, policy, peers, base)   what status shows, from `nft -j list table`
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass

from .config import parse_port_range
from .errors import ConfigError

TABLE = "tunneld_policy"  # inet: one table for whatever families tunneld0 carries
DENIED_LIMIT = 4096  # (source, protocol, port) triples remembered for status
DENIED_FOR = 3600  # seconds a denial is remembered after the last packet
PROTOCOLS = ("tcp", "udp", "icmp")


class PolicyError(ConfigError):
    pass


@dataclass(frozen=True)
class Rule:
    number: int  # its place in the file, from 1: what status and metrics call it
    names: tuple[str, ...]  # nodes, groups expanded
    prefixes: tuple[str, ...]  # sources given as prefixes
    anyone: bool  # from = ["*"]
    ports: tuple[tuple[str, int, int], ...]  # (protocol, first, last); ("tcp", 0, 0) all of tcp; () anything
    to: tuple[str, ...]
    written: tuple[tuple[str, ...], tuple[str, ...]]  # from and ports as the file has them, for status


@dataclass(frozen=True)
class Policy:
    source: str  # the file's path, for messages
    rules: tuple[Rule, ...]


def parse(text: str, source: str) -> Policy:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"policy {source}: not valid TOML: {exc}") from None
    unknown = set(doc) - {"groups", "allow"}
    if unknown:
        raise PolicyError(f"policy {source}: unknown setting {sorted(unknown)[0]!r} (a policy has [groups] "
                          "and [[allow]] rules)")
    groups = doc.get("groups", {})
    if not isinstance(groups, dict):
        raise PolicyError(f"policy {source}: [groups] must be a table of name = [members]")
    members: dict[str, list[str]] = {}
    for name, items in groups.items():
        where = f"policy {source}: group {name!r}"
        if not _valid_name(name):
            raise PolicyError(f"{where}: a group's name is a lower-case DNS name")
        members[name] = _strings(items, where)
        for item in members[name]:
            if item.startswith("group:") or item == "*":
                raise PolicyError(f"{where}: {item!r}: a group holds node names and prefixes, not groups")
    allow = doc.get("allow", [])
    if not isinstance(allow, list) or not all(isinstance(r, dict) for r in allow):
        raise PolicyError(f"policy {source}: write rules as [[allow]] tables")
    return Policy(source, tuple(_rule(i + 1, r, members, source) for i, r in enumerate(allow)))


def _rule(number: int, doc: dict, groups: dict, source: str) -> Rule:
    where = f"policy {source}: rule {number}"
    unknown = set(doc) - {"from", "ports", "to"}
    if unknown:
        raise PolicyError(f"{where}: unknown key {sorted(unknown)[0]!r} (a rule has from, ports and to)")
    if "from" not in doc:
        raise PolicyError(f"{where}: needs from = [...] (node names, group:NAME, prefixes, or \"*\")")
    given = _strings(doc["from"], f"{where}: from")
    if not given:
        raise PolicyError(f"{where}: from is empty; write \"*\" for any peer")
    names, prefixes, anyone = [], [], False
    for item in given:
        if item == "*":
            anyone = True
        elif item.startswith("group:"):
            group = item[len("group:"):]
            if group not in groups:
                raise PolicyError(f"{where}: no group {group!r} in [groups]")
            for member in groups[group]:
                _source(member, f"{where}: group {group!r}", names, prefixes)
        else:
            _source(item, f"{where}: from", names, prefixes)
    ports: list = []
    if "ports" in doc:
        written = _strings(doc["ports"], f"{where}: ports")
        if not written:
            raise PolicyError(f"{where}: ports is empty; leave it out to allow every protocol and port")
        ports = [_port(p, f"{where}: ports") for p in written]
    to = _prefixes(_strings(doc.get("to", []), f"{where}: to"), f"{where}: to") if "to" in doc else ()
    if "to" in doc and not to:
        raise PolicyError(f"{where}: to is empty; leave it out to allow towards everything behind this node")
    return Rule(number, tuple(dict.fromkeys(names)), _prefixes(prefixes, f"{where}: from"), anyone,
                tuple(sorted(set(ports))), to, (tuple(given), tuple(doc.get("ports", ["any"]))))


def _strings(value, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where}: must be a list of strings")
    return [v.strip() for v in value]


def _source(item: str, where: str, names: list, prefixes: list) -> None:
    if item and (item[0].isdigit() or ":" in item):
        prefixes.append(item)
    elif _valid_name(item.lower()):
        names.append(item.lower())
    else:
        raise PolicyError(f"{where}: {item!r} is neither a node name, group:NAME, a prefix nor \"*\"")


def _prefixes(items, where: str) -> tuple[str, ...]:
    out = []
    for item in items:
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise PolicyError(f"{where}: {item!r} is not an address or prefix") from None
        out.append(net)
    return _collapse(out)


def _collapse(nets) -> tuple[str, ...]:
    """Prefixes of both families, each family's merged where they touch."""
    return tuple(str(n) for v in (4, 6) for n in ipaddress.collapse_addresses(x for x in nets if x.version == v))


def _port(text: str, where: str) -> tuple[str, int, int]:
    proto, _, span = text.lower().partition("/")
    if proto not in PROTOCOLS:
        raise PolicyError(f"{where}: {text!r}: write tcp/PORT, udp/PORT, tcp/FIRST-LAST, tcp, udp or icmp")
    if proto == "icmp" or not span:
        if span:
            raise PolicyError(f"{where}: {text!r}: icmp has no ports")
        return proto, 0, 0
    return (proto, *parse_port_range(span, f"{where}: {text!r}", PolicyError))


def _valid_name(name: str) -> bool:
    from .control.registry import valid_name
    return isinstance(name, str) and valid_name(name)


# -- enforcing ---------------------------------------------------------------------------------

def sources(rule: Rule, peers: dict) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the prefixes a rule admits from, given peers: name -> its prefixes; the names not
    known yet). With from = ["*"] the prefixes are empty: any source."""
    if rule.anyone:
        return (), ()
    nets = [ipaddress.ip_network(p) for p in rule.prefixes]
    waiting = []
    for name in rule.names:
        if name in peers:
            nets += [ipaddress.ip_network(p) for p in peers[name]]
        else:
            waiting.append(name)
    return _collapse(nets), tuple(waiting)


def ruleset(policy: Policy | None, peers: dict, ifname: str) -> str:
    """The nftables file that makes tunneld0's admission what policy says (None: removes it).
    `nft -f` applies it whole or not at all."""
    head = f"table inet {TABLE}\ndelete table inet {TABLE}\n"  # so that the file replaces the table
    if policy is None:
        return head
    lines = []
    for rule in policy.rules:
        nets, _ = sources(rule, peers)
        families = (None,) if rule.anyone and not rule.to else (4, 6)  # None: one line for both
        for family in families:
            lines += _lines(rule, family, [n for n in nets if _version(n) == family],
                            [t for t in rule.to if _version(t) == family])
    body = "\n".join(f"    {line}" for line in lines)
    return head + f"""table inet {TABLE} {{
  set denied {{
    type ipv4_addr . inet_proto . inet_service; size {DENIED_LIMIT}; flags dynamic,timeout; timeout {DENIED_FOR}s; counter;
  }}
  set denied6 {{
    type ipv6_addr . inet_proto . inet_service; size {DENIED_LIMIT}; flags dynamic,timeout; timeout {DENIED_FOR}s; counter;
  }}
  chain admit {{
    ct state established,related accept
{body}
    meta l4proto {{ tcp, udp }} update @denied {{ ip saddr . meta l4proto . th dport }}
    meta l4proto != {{ tcp, udp }} update @denied {{ ip saddr . meta l4proto . 0 }}
    meta l4proto {{ tcp, udp }} update @denied6 {{ ip6 saddr . meta l4proto . th dport }}
    meta l4proto != {{ tcp, udp }} update @denied6 {{ ip6 saddr . meta l4proto . 0 }}
    counter drop comment "denied"
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{ifname}" jump admit
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "{ifname}" jump admit
  }}
}}
"""


def _version(prefix: str) -> int:
    return 6 if ":" in prefix else 4


_IP = {4: "ip", 6: "ip6"}
_ICMP = {4: "icmp", 6: "ipv6-icmp", None: "{ icmp, ipv6-icmp }"}


def _lines(rule: Rule, family: int | None, nets: list, to: list) -> list[str]:
    """The nftables rules of one [[allow]] for one family (None: any, a rule from anyone to
    anywhere): none where it names no source or destination of that family."""
    if (not rule.anyone and not nets) or (rule.to and not to):
        return []  # only names not known yet, or only the other family's (an empty set is not nftables')
    ip = _IP.get(family)
    match = (f"{ip} saddr {_set(nets)} " if nets else "") + (f"{ip} daddr {_set(to)} " if to else "")
    tail = f'counter accept comment "rule {rule.number}"'
    by_proto: dict[str, list] = {}
    for proto, lo, hi in rule.ports:
        by_proto.setdefault(proto, []).append((lo, hi))
    if not rule.ports:
        return [match + tail]
    lines = []
    for proto, spans in by_proto.items():
        if proto == "icmp":
            lines.append(f"{match}meta l4proto {_ICMP[family]} {tail}")
        elif (0, 0) in spans:
            lines.append(f"{match}meta l4proto {proto} {tail}")
        else:
            ports = _set([f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in spans])
            lines.append(f"{match}{proto} dport {ports} {tail}")
    return lines


def _set(items) -> str:
    return "{ " + ", ".join(items) + " }"


def totals(listing: dict) -> dict:
    """The counters of the table's rules, from `nft -j list table inet tunneld_policy`:
    {"rule N": [packets, bytes], "denied": [packets, bytes]}. The table is rewritten whenever
    peers come and go, which zeroes them: the daemon carries them over (the base below)."""
    out: dict[str, list[int]] = {}
    for item in listing.get("nftables", ()):
        rule = item.get("rule")
        if rule is None:
            continue
        count = next((e["counter"] for e in rule.get("expr", ()) if "counter" in e), None)
        comment = rule.get("comment", "")
        if count is not None and (comment.startswith("rule ") or comment == "denied"):
            total = out.setdefault(comment, [0, 0])
            total[0] += count.get("packets", 0)
            total[1] += count.get("bytes", 0)
    return out


def add(base: dict, more: dict) -> dict:
    return {k: [a + b for a, b in zip(base.get(k, (0, 0)), more.get(k, (0, 0)))] for k in set(base) | set(more)}


def counters(listing: dict, policy: Policy, peers: dict, base: dict) -> dict:
    """What status shows of a policy at work: each rule with the packets it admitted, the
    packets denied, and the denials of the last hour by source, protocol and port (a source
    named by the peer it belongs to), most first."""
    counts = add(base, totals(listing))
    by_source = []
    for item in listing.get("nftables", ()):
        s = item.get("set")
        if s is not None and s.get("name") in ("denied", "denied6"):
            for e in s.get("elem", ()):
                elem = e.get("elem", {})
                addr, proto, port = elem.get("val", {}).get("concat", ("", "", 0))
                by_source.append({"from": owner(addr, peers), "source": addr, "proto": proto,
                                  "port": port if proto in ("tcp", "udp") else None,
                                  "packets": elem.get("counter", {}).get("packets", 0)})
    by_source.sort(key=lambda d: (-d["packets"], d["source"], str(d["proto"]), d["port"] or 0))
    rules = []
    for rule in policy.rules:
        _, waiting = sources(rule, peers)
        packets, size = counts.get(f"rule {rule.number}", (0, 0))
        rules.append({"rule": rule.number, "from": list(rule.written[0]), "ports": list(rule.written[1]),
                      **({"to": list(rule.to)} if rule.to else {}),
                      "packets": packets, "bytes": size, "waiting_for": list(waiting)})
    denied = counts.get("denied", (0, 0))
    return {"file": policy.source, "rules": rules, "denied_packets": denied[0], "denied_bytes": denied[1],
            "denied": by_source}


def owner(address: str, peers: dict) -> str:
    """The peer whose address or accepted prefix holds address, or "" if none does."""
    try:
        a = ipaddress.ip_address(address)
    except ValueError:
        return ""
    best, length = "", -1
    for name, prefixes in peers.items():
        for p in prefixes:
            net = ipaddress.ip_network(p)
            if a in net and net.prefixlen > length:
                best, length = name, net.prefixlen
    return best
