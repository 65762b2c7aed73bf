"""`tunneld doctor`: what is wrong on this host, in plain words, and the command that fixes it.

check(facts) judges what host/facts.py gathered (and the daemon's status) and returns the
findings in order, each (ok, what, fix): the traps operators meet at 3 a.m. first: the
daemon, tunneld0 and its address, kubelet's --node-ip, flannel's VXLAN device on the
wrong interface or with the wrong MTU, pods larger than flannel.1, UDP to the relay
blocked, forwarding and reverse-path filtering for routes, routes and resolvers that
fight the overlay. Pure: no host access here, so every rule has a unit test, and the
lab tests plant each problem on a real host and see it named.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .engine.mss import VXLAN_OVERHEAD
from .kube import node_ip_problem

MIN_FREE = 100 << 20  # bytes free in the state directory below which a relay is warned
MAX_SKEW = 30.0  # seconds between the relay's clock and ours beyond which doctor says so


@dataclass(frozen=True)
class Finding:
    ok: bool
    what: str
    fix: str = ""


def check(facts: dict) -> list[Finding]:
    status = facts.get("status")
    if status is None:
        return [Finding(False, f"tunneld is not running here ({facts.get('error') or 'no control socket'})",
                        "systemctl start tunneld-node (or tunneld-relay); journalctl -u tunneld-node says why it stopped")]
    if status.get("role") == "relay":
        return _relay(status, facts)
    return _node(status, facts)


def _relay(status: dict, facts: dict) -> list[Finding]:
    out = [Finding(True, f"relay listening on {status.get('listen')}")]
    store = status.get("store") or {}
    if store.get("problem"):
        out.append(Finding(False, f"the relay cannot reach its store ({store.get('kind')}): {store['problem']}",
                           "check etcd: etcdctl endpoint health"))
    else:
        out.append(Finding(True, f"store ({store.get('kind', 'sqlite')}) healthy"))
    port = str(status.get("listen", "")).rpartition(":")[2]
    bound = facts.get("listening") or {}
    for proto in ("udp", "tcp"):
        if proto in bound and not bound[proto]:
            out.append(Finding(False, f"nothing listens on {proto.upper()} port {port} here",
                               "systemctl restart tunneld-relay; ss -lunpt says what holds the port"))
    for proto, where in facts.get("dropping", ()):
        out.append(Finding(False, f"a firewall rule drops {proto} to port {port} ({where}): nodes behind it "
                                  "cannot reach the relay", f"allow udp and tcp to port {port} there (nft list "
                                                            "ruleset shows the rule)"))
    if bound and all(bound.values()) and not facts.get("dropping"):
        out.append(Finding(True, f"listening on UDP and TCP port {port}, no firewall rule here drops it "
                                 "(from outside: tunneld doctor on a node says whether UDP gets through)"))
    for p in status.get("published") or ():
        if not p.get("node_connected"):
            out.append(Finding(False, f"publish {p['name']}: its node {p['node']} is not connected, so clients of "
                                      f"{p['protocol']} port {p['remote_port']} are refused",
                               f"start tunneld-node on {p['node']} (on a node older than 0.5, upgrade it)"))
    if status.get("published") and all(p.get("node_connected") for p in status["published"]):
        out.append(Finding(True, f"{len(status['published'])} published services, each node connected"))
    free = facts.get("disk_free")
    if free is not None and free < MIN_FREE:
        out.append(Finding(False, f"only {free >> 20} MB free for the state directory",
                           "free disk space where --state-dir lives"))
    return out


def _node(status: dict, facts: dict) -> list[Finding]:
    out = []
    name = facts["interface"]
    link = facts["links"].get(name)
    address = status.get("address")
    mtu = status.get("mtu")
    if link is None or not link["up"]:
        out.append(Finding(False, f"{name} is {'missing' if link is None else 'down'}",
                           "systemctl restart tunneld-node"))
    elif address and address not in facts["addresses"].get(name, ()):
        out.append(Finding(False, f"{name} is up but does not hold the overlay address {address}",
                           "systemctl restart tunneld-node"))
    elif mtu and link["mtu"] != mtu:
        out.append(Finding(False, f"{name}'s MTU is {link['mtu']}, where tunneld set {mtu}: something else "
                                  "changed it", "systemctl restart tunneld-node"))
    else:
        out.append(Finding(True, f"{name} is up with {address}, MTU {link['mtu']}"))
    if address:
        local = [a for addrs in facts["addresses"].values() for a in addrs]
        problem = node_ip_problem(address, local)
        out.append(Finding(problem is None, f"kubelet would {'refuse' if problem else 'accept'} --node-ip={address}"
                           + (f": {problem}" if problem else ""), "systemctl restart tunneld-node" if problem else ""))
        for where, value in facts.get("kubelet", ()):
            if address not in value.split(","):
                out.append(Finding(False, f"kubelet's --node-ip in {where} is {value}, not the overlay address "
                                          f"{address}", f"set --node-ip={address} there (tunneld kube-env prints "
                                                         "it) and systemctl restart kubelet"))
            else:
                out.append(Finding(True, f"kubelet's --node-ip in {where} is the overlay address"))
    out += _flannel(facts, name, address)
    relay = status.get("relay") or {}
    if not relay.get("connected"):
        out.append(Finding(False, f"not connected to the relay {relay.get('endpoint')}: "
                                  f"{relay.get('problem') or 'no answer'}",
                           "check that the relay's UDP and TCP port is open from here"))
    elif relay.get("transport") == "tcp":
        out.append(Finding(False, "UDP to the relay is blocked, so tunneld fell back to TCP (slower, and no "
                                  "direct paths to peers behind NAT)",
                           f"open UDP to {relay.get('endpoint')} in the firewalls on the way"))
    else:
        rtt = relay.get("rtt_ms")
        out.append(Finding(True, f"relay {relay.get('endpoint')} over UDP" + (f", RTT {rtt} ms" if rtt else "")))
    out += _clock(relay.get("clock_skew_s")) + _path_mtu(facts.get("path_mtu"), status.get("mtu"))
    out += _policy(status.get("policy"))
    if status.get("advertised_routes") and facts.get("ip_forward") != "1":
        out.append(Finding(False, "this node advertises routes but IPv4 forwarding is off",
                           "sysctl -w net.ipv4.ip_forward=1 (and in /etc/sysctl.d/ to keep it)"))
    if status.get("accepted_routes"):
        values = [int(v) for v in (facts.get("rp_filter"), facts.get("rp_filter_all")) if v and v.isdigit()]
        if values and max(values) == 1:  # the kernel takes the larger of the two: 1 is strict, 2 loose
            out.append(Finding(False, f"reverse-path filtering is strict on {name}: packets from accepted "
                                      "routes arrive there and may be dropped",
                               f"sysctl -w net.ipv4.conf.{name}.rp_filter=2 net.ipv4.conf.all.rp_filter=2"))
    for dst, dev in facts.get("routes_elsewhere", ()):
        out.append(Finding(False, f"traffic to {dst} leaves through {dev or 'no interface'}, not {name}",
                           f"ip route get {dst}; remove the route that wins over {name}'s"))
    network = status.get("network")
    if network:
        net = ipaddress.ip_network(network)
        for where, server in facts.get("resolvers", ()):
            try:
                inside = ipaddress.ip_address(server) in net
            except ValueError:
                continue
            if inside:
                out.append(Finding(False, f"the resolver {server} in {where} is inside the overlay's range "
                                          f"{network}: DNS may go into the tunnel",
                                   "use a resolver outside the overlay, or give the relay another --network"))
    return out


def _clock(skew) -> list[Finding]:
    if skew is None:
        return []  # a relay before 0.4 does not say its time
    if abs(skew) <= MAX_SKEW:
        return [Finding(True, f"the relay's clock is within {max(abs(skew), 1):.0f} s of this host's")]
    return [Finding(False, f"the relay's clock is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} this "
                           "host's: join tokens expire by the relay's clock, and the logs of the two do not "
                           "line up", "run NTP on both hosts (timedatectl set-ntp true; timedatectl "
                                      "timesync-status)")]


def _path_mtu(probe: dict | None, mtu) -> list[Finding]:
    """The underlay between us and the relay against what tunneld0's MTU needs of it."""
    if not probe:
        return []
    size, relay = probe["size"], probe["address"]
    if probe["ok"] is None:
        return [Finding(True, f"the path MTU to the relay was not probed: {relay} answers no ping")]
    if probe["ok"]:
        return [Finding(True, f"{size}-byte packets with DF set reach the relay: tunneld0's {mtu} and the "
                              f"tunnel's {size - mtu} bytes")]
    carried = f"at most {probe['mtu']} bytes" if probe["mtu"] else f"less than {size} bytes"
    via = f" via {probe['gateway']}" if probe.get("gateway") else ""
    fix_mtu = probe["mtu"] or "N"
    return [Finding(False, f"the path to the relay carries {carried} with DF set, but tunneld0's MTU {mtu} needs "
                           f"{size}: full-size packets vanish on the way (an MTU black hole)",
                    f"ip route replace {relay}{via} mtu {fix_mtu} (the largest size that passes: ping -M do -s "
                    f"SIZE {relay}), then systemctl restart tunneld-node: tunneld0's MTU follows the route's")]


def _policy(policy: dict | None) -> list[Finding]:
    if policy is None:
        return []
    out = [Finding(True, f"policy {policy['file']}: {len(policy['rules'])} rules in force, "
                         f"{policy['denied_packets']} packets denied")]
    for rule in policy["rules"]:
        if rule["waiting_for"]:
            out.append(Finding(False, f"policy rule {rule['rule']} names {', '.join(rule['waiting_for'])}, which "
                                      "no peer is called", f"check the names in {policy['file']} against tunneld "
                                                           "status (a node not joined yet counts once it joins)"))
    return out


def _flannel(facts: dict, name: str, address: str | None) -> list[Finding]:
    links = facts["links"]
    flannel = links.get("flannel.1")
    if flannel is None:
        return []
    mtu = links.get(name, {}).get("mtu")  # the device's own: what flannel.1 goes through
    out = []
    ours = links.get(name, {}).get("index")
    if flannel["vxlan_link"] != ours or (address and flannel["vxlan_local"] != address):
        out.append(Finding(False, f"flannel.1 is not on {name} (local {flannel['vxlan_local']}): pods' VXLAN "
                                  "leaves from the default route's address, outside the tunnel",
                           f"flannel: --iface={name} and the node annotation tunneld kube-env prints; "
                           "then restart flannel"))
    elif mtu and flannel["mtu"] > mtu - VXLAN_OVERHEAD:
        out.append(Finding(False, f"flannel.1's MTU is {flannel['mtu']}, more than {mtu - VXLAN_OVERHEAD} "
                                  f"({name}'s {mtu} less VXLAN's {VXLAN_OVERHEAD}): large packets stall",
                           f"restart flannel on this node so that it takes {name}'s MTU"))
    else:
        spare = mtu - VXLAN_OVERHEAD - flannel["mtu"] if mtu else 0
        out.append(Finding(True, f"flannel.1 sits on {name} with MTU {flannel['mtu']}"
                           + (f" ({spare} bytes less than {name} allows: restart flannel to use them)" if spare else "")))
    for pod, link in links.items():
        bigger = link["mtu"] > flannel["mtu"]
        if bigger and (pod == "cni0" or (link["master"] is not None and link["master"] == links.get("cni0", {}).get("index"))):
            out.append(Finding(False, f"{pod}'s MTU {link['mtu']} is larger than flannel.1's {flannel['mtu']}",
                               "restart flannel and the pods on this node (or set the CNI's MTU)"))
    return out


def render(findings: list[Finding]) -> str:
    lines = []
    for f in findings:
        lines.append(f"{'ok ' if f.ok else 'BAD'}  {f.what}")
        if not f.ok and f.fix:
            lines.append(f"     fix: {f.fix}")
    return "\n".join(lines)
