"""tunneld's benchmark: overlay TCP throughput next to references measured in the same run.

These machines are shared and noisy, so every figure is printed next to raw veth
measured minutes apart on the same machine: ratios hold, absolute numbers drift.

  raw veth          two namespaces joined by one veth pair: the machine's ceiling
  underlay          public node -> relay host through the "internet" router namespace
  tunneld relayed   node -> node over tunneld0, through the relay, encrypted end to end
                    (the receiving node sits behind NAT with no inbound path)

Usage: bin/bench [--seconds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

from tunneld.lab import Lab, LabError
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
        sender = lab.public_host("sender")
        receiver = lab.nat_host("receiver", "no-inbound")
        token = ov.token()
        ov.join(sender, "sender", token)
        ov.join(receiver, "receiver", token)
        ov.wait_connected()
        rows["underlay (routed)"] = iperf(lab, ov.relay.ns, sender.ns, ov.relay.address, seconds)
        target = ov.address("receiver")
        # warm the end-to-end session so that the handshake is not timed
        ov.ping("sender", target, count=2)
        rows["tunneld relayed"] = iperf(lab, receiver.ns, sender.ns, target, seconds)
        rows["tunneld relayed, 4 streams"] = iperf(lab, receiver.ns, sender.ns, target, seconds, streams=4)
        drops = {n: ov.node_status(n)["drops"] for n in ("sender", "receiver")}
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
