"""doctor.check: the rules on made-up facts (the lab test plants each on a real host)."""

from tunneld.doctor import check, render

LINKS = {"lo": {"index": 1, "up": True, "mtu": 65536, "master": None, "kind": None},
         "eth0": {"index": 2, "up": True, "mtu": 1500, "master": None, "kind": "veth"},
         "tunneld0": {"index": 3, "up": True, "mtu": 1432, "master": None, "kind": "tun"}}
STATUS = {"role": "node", "address": "100.64.0.2", "network": "100.64.0.0/10", "mtu": 1432, "interface": "tunneld0",
          "relay": {"endpoint": "192.0.2.1:7000", "connected": True, "transport": "udp", "rtt_ms": 1.0},
          "advertised_routes": [], "accepted_routes": [], "peers": []}


def facts(**over):
    out = {"status": STATUS, "interface": "tunneld0", "links": dict(LINKS),
           "addresses": {"lo": ["127.0.0.1"], "eth0": ["198.51.100.11"], "tunneld0": ["100.64.0.2"]},
           "ip_forward": "0", "rp_filter": "0", "rp_filter_all": "0", "kubelet": [], "resolvers": [],
           "routes_elsewhere": [], "disk_free": 1 << 40}
    out.update(over)
    return out


def bad(findings):
    return [f.what for f in findings if not f.ok]


def test_a_healthy_node_has_no_finding_and_renders_ok_lines():
    found = check(facts())
    assert bad(found) == [] and render(found).startswith("ok   tunneld0 is up with 100.64.0.2")


def test_the_address_missing_from_tunneld0_and_kubelet_refusing_it():
    found = bad(check(facts(addresses={"tunneld0": []})))
    assert any("does not hold the overlay address" in f for f in found)
    assert any("kubelet would refuse --node-ip=100.64.0.2" in f for f in found)


def test_reverse_path_filtering_is_judged_as_the_kernel_does():
    routes = dict(STATUS, accepted_routes=["198.18.1.0/24"])
    assert bad(check(facts(status=routes, rp_filter="1", rp_filter_all="2"))) == []  # loose wins
    assert bad(check(facts(status=routes, rp_filter="0", rp_filter_all="1")))
    assert bad(check(facts(status=routes, rp_filter="1", rp_filter_all="0")))


def test_flannel_on_another_link_or_local_and_pods_larger():
    links = dict(LINKS, **{"flannel.1": {"index": 4, "up": True, "mtu": 1382, "master": None, "kind": "vxlan",
                                         "vxlan_link": 2, "vxlan_local": "198.51.100.11"}})
    assert any("flannel.1 is not on tunneld0" in f for f in bad(check(facts(links=links))))
    links["flannel.1"] = dict(links["flannel.1"], vxlan_link=3, vxlan_local="100.64.0.2")
    links["cni0"] = {"index": 5, "up": True, "mtu": 1382, "master": None, "kind": "bridge"}
    links["veth1"] = {"index": 6, "up": True, "mtu": 1450, "master": 5, "kind": "veth"}
    assert bad(check(facts(links=links))) == ["veth1's MTU 1450 is larger than flannel.1's 1382"]


def test_the_relay_tcp_fallback_and_a_resolver_in_the_overlay():
    tcp = dict(STATUS, relay=dict(STATUS["relay"], transport="tcp"))
    assert any("fell back to TCP" in f for f in bad(check(facts(status=tcp))))
    found = bad(check(facts(resolvers=[("/etc/resolv.conf", "100.100.100.100"), ("/etc/resolv.conf", "::1")])))
    assert found == ["the resolver 100.100.100.100 in /etc/resolv.conf is inside the overlay's range "
                     "100.64.0.0/10: DNS may go into the tunnel"]


def test_not_running_and_a_relay_with_its_store_down_and_no_disk():
    assert bad(check({"status": None, "error": "no control socket"}))
    relay = {"role": "relay", "listen": "192.0.2.1:7000", "store": {"kind": "etcd", "problem": "timed out"}}
    found = bad(check({"status": relay, "disk_free": 10 << 20}))
    assert len(found) == 2 and "etcd" in found[0] and "10 MB free" in found[1]


def test_the_relays_clock_far_from_ours_is_said_and_near_is_fine():
    def skewed(s):
        return check(facts(status=dict(STATUS, relay=dict(STATUS["relay"], clock_skew_s=s))))
    assert bad(skewed(-2.4)) == [] and any("within 2 s" in f.what for f in skewed(-2.4))
    found = bad(skewed(-95.0))
    assert found == ["the relay's clock is 95 s behind this host's: join tokens expire by the relay's clock, and "
                     "the logs of the two do not line up"]
    assert "ahead of" in bad(skewed(31.0))[0]
    assert not any("clock" in f.what for f in check(facts()))  # a relay that does not say its time


def test_the_path_to_the_relay_against_tunneld0s_mtu():
    probe = {"address": "192.0.2.1", "size": 1500, "ok": True, "mtu": None}
    assert bad(check(facts(path_mtu=probe))) == []
    found = check(facts(path_mtu=dict(probe, ok=False, mtu=1400, gateway="198.19.1.1")))
    assert bad(found) == ["the path to the relay carries at most 1400 bytes with DF set, but tunneld0's MTU 1432 "
                          "needs 1500: full-size packets vanish on the way (an MTU black hole)"]
    assert [f.fix for f in found if not f.ok][0].startswith("ip route replace 192.0.2.1 via 198.19.1.1 mtu 1400")
    silent = bad(check(facts(path_mtu=dict(probe, ok=False))))  # no ICMP error came back: a black hole
    assert silent and "less than 1500 bytes" in silent[0]
    assert bad(check(facts(path_mtu=dict(probe, ok=None)))) == []  # the relay answers no ping: not known


def test_a_policy_rule_naming_no_peer():
    policy = {"file": "/etc/tunneld/policy.toml", "denied_packets": 4,
              "rules": [{"rule": 1, "waiting_for": []}, {"rule": 2, "waiting_for": ["wokrer-1"]}]}
    found = check(facts(status=dict(STATUS, policy=policy)))
    assert bad(found) == ["policy rule 2 names wokrer-1, which no peer is called"]
    assert any(f.ok and "2 rules in force, 4 packets denied" in f.what for f in found)


def test_a_relay_not_listening_or_shut_out_by_its_own_firewall():
    relay = {"role": "relay", "listen": "192.0.2.1:7000", "store": {"kind": "sqlite"}}
    ok = check({"status": relay, "disk_free": 1 << 40, "listening": {"udp": True, "tcp": True}, "dropping": []})
    assert bad(ok) == [] and any("listening on UDP and TCP port 7000" in f.what for f in ok)
    found = bad(check({"status": relay, "disk_free": 1 << 40, "listening": {"udp": True, "tcp": False},
                       "dropping": [("udp", "table ip filter, chain INPUT")]}))
    assert found == ["nothing listens on TCP port 7000 here",
                     "a firewall rule drops udp to port 7000 (table ip filter, chain INPUT): nodes behind it cannot "
                     "reach the relay"]


def test_a_published_service_whose_node_is_away_is_said():
    status = {"role": "relay", "listen": "192.0.2.1:7000", "store": {"kind": "sqlite"},
              "published": [{"name": "web", "node": "edge-1", "protocol": "tcp", "remote_port": 18080,
                             "node_connected": False},
                            {"name": "dns", "node": "edge-2", "protocol": "udp", "remote_port": 18053,
                             "node_connected": True}]}
    bad = [f for f in check({"status": status}) if not f.ok]
    assert len(bad) == 1 and "publish web: its node edge-1 is not connected" in bad[0].what
    assert "tunneld-node on edge-1" in bad[0].fix
    status["published"][0]["node_connected"] = True
    assert any(f.ok and "2 published services" in f.what for f in check({"status": status}))
