"""The policy file, pure: what it accepts and how it says no, the nftables table it becomes
for the peers known at the time, and what status makes of nft's counters."""

import pytest

from tunneld.policy import PolicyError, add, counters, owner, parse, ruleset, sources, totals

FULL = """
[groups]
workers = ["w1", "W2", "198.18.4.0/24"]

[[allow]]
from = ["a", "group:workers", "100.64.9.0/24"]
ports = ["tcp/10250", "udp/8472", "tcp/30000-32767", "icmp", "tcp/10250"]

[[allow]]
from = ["*"]
ports = ["tcp"]
to = ["198.18.1.7"]

[[allow]]
from = ["later"]
"""

PEERS = {"a": ("100.64.0.2/32", "2001:db8:64::6440:2/128"),  # a name: both overlay addresses (admission.py)
         "w1": ("100.64.0.3/32", "2001:db8:64::6440:3/128", "198.18.2.0/24"),
         "w2": ("100.64.0.4/32", "2001:db8:64::6440:4/128")}


def test_the_documented_form_parses():
    p = parse(FULL, "p.toml")
    first, anyone, later = p.rules
    assert first.names == ("a", "w1", "w2") and first.prefixes == ("100.64.9.0/24", "198.18.4.0/24")
    assert first.ports == (("icmp", 0, 0), ("tcp", 10250, 10250), ("tcp", 30000, 32767), ("udp", 8472, 8472))
    assert anyone.anyone and anyone.ports == (("tcp", 0, 0),) and anyone.to == ("198.18.1.7/32",)
    assert later.ports == () and later.written == (("later",), ("any",))


def test_an_empty_policy_denies_everything_not_answered():
    assert parse("", "p.toml").rules == ()
    text = ruleset(parse("", "p.toml"), {}, "tunneld0")
    assert "accept comment" not in text and 'counter drop comment "denied"' in text


@pytest.mark.parametrize("text, says", [
    ("[[allow]\n", "not valid TOML"),
    ("rules = 1\n", "unknown setting 'rules'"),
    ("[[allow]]\nform = ['a']\n", "rule 1: unknown key 'form'"),
    ("[[allow]]\nports = ['tcp']\n", "rule 1: needs from"),
    ("[[allow]]\nfrom = []\n", "from is empty"),
    ("[[allow]]\nfrom = 'a'\n", "must be a list of strings"),
    ("[[allow]]\nfrom = ['group:x']\n", "no group 'x'"),
    ("[groups]\nx = ['group:y']\n", "not groups"),
    ("[groups]\n'X Y' = ['a']\n", "lower-case DNS name"),
    ("[[allow]]\nfrom = ['a b']\n", "neither a node name"),
    ("[[allow]]\nfrom = ['100.64.0.0/33']\n", "not an address or prefix"),
    ("[[allow]]\nfrom = ['2001:db8::/129']\n", "not an address or prefix"),
    ("[[allow]]\nfrom = ['a']\nports = []\n", "ports is empty"),
    ("[[allow]]\nfrom = ['a']\nports = ['sctp/9']\n", "'sctp/9'"),
    ("[[allow]]\nfrom = ['a']\nports = ['tcp/0']\n", "1-65535"),
    ("[[allow]]\nfrom = ['a']\nports = ['tcp/90-80']\n", "the first not above the last"),
    ("[[allow]]\nfrom = ['a']\nports = ['tcp/http']\n", "a port is a number"),
    ("[[allow]]\nfrom = ['a']\nports = ['icmp/8']\n", "icmp has no ports"),
    ("[[allow]]\nfrom = ['a']\nto = []\n", "to is empty"),
    ("[[allow]]\nfrom = ['a']\n[[allow]]\nfrom = ['b']\nports = ['udp/x']\n", "rule 2"),
])
def test_mistakes_are_refused_in_one_line_naming_them(text, says):
    with pytest.raises(PolicyError) as e:
        parse(text, "/etc/tunneld/policy.toml")
    message = str(e.value)
    assert says in message and message.startswith("policy /etc/tunneld/policy.toml") and "\n" not in message


def test_the_table_admits_flows_then_the_rules_then_counts_and_drops():
    text = ruleset(parse(FULL, "p.toml"), PEERS, "tunneld0")
    lines = [line.strip() for line in text.splitlines()]
    assert lines[:2] == ["table inet tunneld_policy", "delete table inet tunneld_policy"]  # a whole replace
    admit = lines[lines.index("chain admit {") + 1:]
    assert admit[0] == "ct state established,related accept"
    src = "ip saddr { 100.64.0.2/31, 100.64.0.4/32, 100.64.9.0/24, 198.18.2.0/24, 198.18.4.0/24 }"
    src6 = "ip6 saddr { 2001:db8:64::6440:2/127, 2001:db8:64::6440:4/128 }"  # IPv6: the names' addresses alone
    assert admit[1:8] == [
        f'{src} meta l4proto icmp counter accept comment "rule 1"',
        f'{src} tcp dport {{ 10250, 30000-32767 }} counter accept comment "rule 1"',
        f'{src} udp dport {{ 8472 }} counter accept comment "rule 1"',
        f'{src6} meta l4proto ipv6-icmp counter accept comment "rule 1"',
        f'{src6} tcp dport {{ 10250, 30000-32767 }} counter accept comment "rule 1"',
        f'{src6} udp dport {{ 8472 }} counter accept comment "rule 1"',
        'ip daddr { 198.18.1.7/32 } meta l4proto tcp counter accept comment "rule 2"',  # to: IPv4 only
    ]
    assert 'comment "rule 3"' not in text  # "later" is not a peer yet: it admits nothing
    assert admit[8:13] == [
        "meta l4proto { tcp, udp } update @denied { ip saddr . meta l4proto . th dport }",
        "meta l4proto != { tcp, udp } update @denied { ip saddr . meta l4proto . 0 }",
        "meta l4proto { tcp, udp } update @denied6 { ip6 saddr . meta l4proto . th dport }",
        "meta l4proto != { tcp, udp } update @denied6 { ip6 saddr . meta l4proto . 0 }",
        'counter drop comment "denied"']
    assert text.count('iifname "tunneld0" jump admit') == 2  # to the node, and forwarded into its prefixes


def test_names_not_known_yet_wait_and_then_count():
    rule = parse(FULL, "p.toml").rules[2]
    assert sources(rule, PEERS) == ((), ("later",))
    with_later = {**PEERS, "later": ("100.64.0.9/32",)}
    assert sources(rule, with_later) == (("100.64.0.9/32",), ())
    assert 'ip saddr { 100.64.0.9/32 } counter accept comment "rule 3"' in ruleset(
        parse(FULL, "p.toml"), with_later, "tunneld0")


def test_no_policy_removes_the_table():
    assert ruleset(None, PEERS, "tunneld0") == "table inet tunneld_policy\ndelete table inet tunneld_policy\n"


def rule(number, packets, size=100):
    return {"rule": {"comment": f"rule {number}" if number else "denied",
                     "expr": [{"match": {}}, {"counter": {"packets": packets, "bytes": size}}, {"accept": None}]}}


LISTING = {"nftables": [
    {"metainfo": {}}, rule(1, 3), rule(1, 2), rule(2, 0, 0), rule(0, 9, 900),
    {"rule": {"expr": [{"accept": None}]}},  # established: no counter
    {"set": {"name": "denied", "elem": [
        {"elem": {"val": {"concat": ["198.18.2.9", "tcp", 22]}, "counter": {"packets": 4}}},
        {"elem": {"val": {"concat": ["100.64.0.4", "icmp", 0]}, "counter": {"packets": 1}}},
        {"elem": {"val": {"concat": ["100.64.7.7", "udp", 53]}, "counter": {"packets": 4}}},
    ]}},
    {"set": {"name": "denied6", "elem": [
        {"elem": {"val": {"concat": ["2001:db8:64::6440:3", "tcp", 8081]}, "counter": {"packets": 2}}},
    ]}},
]}


def test_status_counts_by_rule_and_names_the_denied_by_peer_and_port():
    policy = parse(FULL, "p.toml")
    assert totals(LISTING) == {"rule 1": [5, 200], "rule 2": [0, 0], "denied": [9, 900]}
    status = counters(LISTING, policy, PEERS, {"rule 1": [10, 1000], "denied": [1, 1]})
    assert [(r["rule"], r["packets"], r["waiting_for"]) for r in status["rules"]] == [
        (1, 15, []), (2, 0, []), (3, 0, ["later"])]
    assert status["rules"][1]["to"] == ["198.18.1.7/32"] and "to" not in status["rules"][0]
    assert (status["denied_packets"], status["denied_bytes"]) == (10, 901)
    assert [(d["from"], d["proto"], d["port"], d["packets"]) for d in status["denied"]] == [
        ("", "udp", 53, 4), ("w1", "tcp", 22, 4), ("w1", "tcp", 8081, 2), ("w2", "icmp", None, 1)]


def test_the_longest_prefix_names_the_owner():
    peers = {"gw": ("100.64.0.2/32", "198.18.0.0/16"), "pods": ("100.64.0.3/32", "198.18.2.0/24")}
    assert owner("198.18.2.1", peers) == "pods" and owner("198.18.3.1", peers) == "gw"
    assert owner("203.0.113.1", peers) == "" and owner("junk", peers) == ""


def test_carried_counters_add_up():
    assert add({"rule 1": [1, 2]}, {"rule 1": [3, 4], "denied": [5, 6]}) == {"rule 1": [4, 6], "denied": [5, 6]}


def test_the_readmes_policies_parse():
    import os
    import re
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    section = readme[readme.index("### Policy"):readme.index("### Metrics")]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert len(blocks) == 4
    for block in blocks:
        parse(block, "README.md")


def test_rules_per_family_anyone_and_ipv6_prefixes():
    p = parse('[[allow]]\nfrom = ["*"]\nports = ["icmp", "tcp/22"]\n'
              '[[allow]]\nfrom = ["a", "2001:db8:9::/64"]\nto = ["2001:db8:70::/64"]\n', "p.toml")
    lines = [line.strip() for line in ruleset(p, PEERS, "tunneld0").splitlines()]
    assert 'meta l4proto { icmp, ipv6-icmp } counter accept comment "rule 1"' in lines  # "*": both families
    assert 'tcp dport { 22 } counter accept comment "rule 1"' in lines
    # towards an IPv6 prefix: the IPv6 sources alone (a's IPv4 address cannot reach it)
    assert [line for line in lines if line.endswith('"rule 2"')] == [
        'ip6 saddr { 2001:db8:9::/64, 2001:db8:64::6440:2/128 } ip6 daddr { 2001:db8:70::/64 } '
        'counter accept comment "rule 2"']
