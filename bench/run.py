"""tunneld's benchmark: overlay TCP throughput next to references measured in the same run.

These machines are shared and noisy, so every figure is printed next to raw veth
measured minutes apart on the same machine: ratios hold, absolute numbers drift.

  raw veth          two namespaces joined by one veth pair: the machine's ceiling
  underlay          public node -> relay host through the "internet" router namespace
  tunneld direct    public node -> public node over tunneld0, hole-punched UDP, encrypted
  tunneld relayed   node behind a cone NAT -> node behind a NAT with no inbound path: the
                    pair can never go direct, so every packet crosses the relay (checked)

Usage: bin/bench [--seconds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

from tunneld.lab import Lab, LabError, wait_for
from tunneld.lab.overlay import Overlay


def iperf(lab: Lab, server_ns: str, client_ns: str, address: str, seconds: float,
          streams: int = 1, port: int = 5201) -> dict:
    server = lab.spawn(server_ns, "iperf3", "-s", "-1", "-B", address, "-p", str(port))
    try:
        time.sleep(0.3)  # let the server bind before the client connects
        out = lab.nsexec(client_ns, "iperf3", "-c", address, "-p", str(port), "-t", str(seconds),
                         "-P", str(streams), "-J", timeout=seconds + 30)
    finally:
        lab.stop(server, timeout=3)
    result = json.loads(out.stdout)
    end = result["end"]
    return {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
            "retransmits": end["sum_sent"].get("retransmits", 0),
            "cpu_client": end["cpu_utilization_percent"]["host_total"],
            "cpu_server": end["cpu_utilization_percent"]["remote_total"]}


def peer_path(ov: Overlay, src: str, dst: str) -> str:
    return next(p["path"] for p in ov.node_status(src)["peers"] if p["name"] == dst)


def measure(seconds: float) -> dict:
    rows = {}
    with Lab() as lab:
        # Reference: a bare veth pair.
        a = lab.add_namespace("veth-a")
        b = lab.add_namespace("veth-b")
        lab.veth(a, "eth0", b, "eth0")
        lab.addr(a, "eth0", "198.18.200.1/24")
        lab.addr(b, "eth0", "198.18.200.2/24")
        rows["raw veth"] = iperf(lab, b, a, "198.18.200.2", seconds)

        ov = Overlay(lab)
        ov.start_relay()
        hosts = {"pub-a": lab.public_host("pub-a"), "pub-b": lab.public_host("pub-b"),
                 "sender": lab.nat_host("sender", "cone"), "receiver": lab.nat_host("receiver", "no-inbound")}
        token = ov.token()
        for name, host in hosts.items():
            ov.join(host, name, token)
        ov.wait_connected()
        rows["underlay (routed)"] = iperf(lab, ov.relay.ns, hosts["pub-a"].ns, ov.relay.address, seconds)
        for label, src, dst, path in (("tunneld direct", "pub-a", "pub-b", "direct"),
                                      ("tunneld relayed", "sender", "receiver", "relay")):
            target = ov.address(dst)
            ov.ping(src, target, count=2)  # a session first, so that no handshake is timed
            wait_for(lambda: peer_path(ov, src, dst) == path, 30, what=f"{src} -> {dst} to be {path}")
            rows[label] = iperf(lab, hosts[dst].ns, hosts[src].ns, target, seconds)
            rows[f"{label}, 4 streams"] = iperf(lab, hosts[dst].ns, hosts[src].ns, target, seconds, streams=4)
            if peer_path(ov, src, dst) != path:
                raise LabError(f"{src} -> {dst} left the {path} path during the measurement")
        drops = {n: ov.node_status(n)["drops"] for n in hosts}
        drops["relay"] = ov.status(ov.relay)["drops"]
    return {"rows": rows, "drops": drops}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per measurement [10]")
    ap.add_argument("--json", metavar="FILE", help="also write the results here")
    args = ap.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M")
    try:
        result = measure(args.seconds)
    except (LabError, subprocess.SubprocessError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    rows = result["rows"]
    raw = rows["raw veth"]["gbps"]
    print(f"\ntunneld bench, {started}, {platform.node()} ({platform.machine()}, "
          f"{len(__import__('os').sched_getaffinity(0))} cores), {args.seconds:.0f} s per row, iperf3 TCP")
    print(f"{'path':<30} {'Gbit/s':>8} {'x raw veth':>11} {'retransmits':>12}")
    for name, r in rows.items():
        print(f"{name:<30} {r['gbps']:>8.3f} {r['gbps'] / raw:>10.1%} {r['retransmits']:>12}")
    nonzero = {k: v for k, v in result["drops"].items() if v}
    if nonzero:
        print("tunneld drops during the run:", json.dumps(nonzero))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": started, "host": platform.node(), "seconds": args.seconds, **result}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
