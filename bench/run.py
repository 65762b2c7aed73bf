"""tunneld's bench: the overlay next to the machine's limits and to its peers, in one run.

These machines are shared and noisy, so every figure is printed as a ratio to raw veth
and to wireguard-go measured in the same run: ratios hold, absolute numbers drift.

Rows (bench/systems.py builds each in network namespaces):
  raw veth, underlay (bridged), underlay (NATed), kernel VXLAN (no tunnel, pods only),
  wireguard-go direct, nebula direct, nebula relayed, tunneld direct, tunneld relayed (each
  node with its default workers, one per core), and tunneld direct and relayed again with
  --workers 1 (tcp1, tcp4: the workers' gain, printed as a ratio under the table), and
  tunneld direct with a policy file that admits the overlay (tcp1, tcp4, udp64, rtt: what
  nftables and conntrack on tunneld0 cost).
Cells, each measured `--repeat` times (min / median / max kept):
  tcp1, tcp4     node -> node iperf3 TCP, 1 and 4 streams, Gbit/s
  pod            iperf3 TCP between "pods" on a VXLAN device (flannel's) over the system
  podr           iperf3 TCP between pods routed natively (tunneld's routed mode, no VXLAN)
  loss1          tcp1 with 1% of the tunnel's datagrams dropped at the receiver (iptables)
  udp64          64-byte UDP datagrams per second received (iperf3 -u -l 64, unlimited rate)
  rtt            ping round trip, ms: the median of 100 pings 20 ms apart, after 1 s of quiet
                 (their average and 90th percentile are printed under the table)
  cpu            CPU of the tunnel's own processes (and their workers) during tcp1, % of one core

And the relay's own capacity (--capacity 0 skips it): datagrams of 1,400 and 64 bytes from
8 senders to 8 receivers through one relay, forwarded per second and in Gbit/s, with one
worker and with as many as there are cores (serve --workers).

And publishing (bench/published.py, row "published port"): a client outside the overlay
through a port the relay publishes, next to socat forwarding the same on the relay's host.

And the relay's scale: --nodes lightweight nodes (bench/swarm.py: the node engine without
per-peer state) join one relay; the time until all have joined, its RSS and idle CPU.

And, with --compare REV, tunneld at another revision of this repository (a release tag, say),
measured in the same run as rows "tunneld REV direct" and "tunneld REV relayed".

Usage: bin/bench [--quick | --full] [--seconds N] [--repeat N] [--only ROW] [--nodes N]
                 [--compare REV] [--json FILE] [--chart FILE]
       bin/bench --budget [--compare REV]      the per-packet budget alone (bench/budget.py)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # bench/'s modules, and the lab in tests/

import published  # noqa: E402
import systems  # noqa: E402
from tests.lab import Lab, LabError  # noqa: E402

CELLS = ("tcp1", "tcp4", "pod", "podr", "loss1", "udp64", "rtt", "cpu")
UNITS = {"tcp1": "Gbit/s", "tcp4": "Gbit/s", "pod": "Gbit/s", "podr": "Gbit/s", "loss1": "Gbit/s", "udp64": "kpps",
         "rtt": "ms", "cpu": "% core"}
SPREAD = 0.25  # a cell whose runs differ by more than this (max / min - 1) is marked ~


def iperf(lab: Lab, pair: systems.Pair, seconds: float, streams: int = 1, udp64: bool = False) -> dict:
    server = lab.spawn(pair.server_ns, "iperf3", "-s", "-1", "-B", pair.server_addr, "-p", "5201")
    try:
        time.sleep(0.3)  # let the server bind before the client connects
        cmd = ["iperf3", "-c", pair.server_addr, "-p", "5201", "-t", str(seconds), "-P", str(streams), "-J"]
        if udp64:
            cmd += ["-u", "-l", "64", "-b", "0"]
        out = lab.nsexec(pair.client_ns, *cmd, timeout=seconds + 30)
    finally:
        lab.stop(server, timeout=3)
    end = json.loads(out.stdout)["end"]
    if udp64:
        s = end["sum"]
        return {"value": (s["packets"] - s["lost_packets"]) / s["seconds"] / 1e3}
    return {"value": end["sum_received"]["bits_per_second"] / 1e9,
            "retransmits": end["sum_sent"].get("retransmits", 0)}


PINGS, SETTLE = 100, 1.0


def rtt(lab: Lab, pair: systems.Pair) -> dict:
    """PINGS pings 20 ms apart, after SETTLE seconds for the cell before to wind down (its
    iperf3 exiting, the kernel freeing its buffers). The value is the median ping: on a shared
    VM one host stall of 15 ms among 50 pings moves ping's average by 0.3 ms, whichever tunnel
    it hits; the average and the 90th percentile are kept beside it."""
    time.sleep(SETTLE)
    out = lab.nsexec(pair.client_ns, "ping", "-n", "-c", str(PINGS), "-i", "0.02", pair.server_addr,
                     timeout=30).stdout.decode()
    times = sorted(float(t) for t in re.findall(r"time=([\d.]+)", out))
    if not times:
        raise LabError(f"no ping came back over {pair.dev}")
    return {"value": statistics.median(times), "avg": statistics.fmean(times),
            "p90": times[min(len(times) - 1, len(times) * 9 // 10)], "lost": PINGS - len(times)}


def busy() -> tuple[int, int]:
    """The machine's busy and total jiffies since boot, over all cores (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def with_children(pids) -> list:
    """A daemon's PID and its children's: a node's workers, a relay's."""
    out = list(pids)
    for pid in pids:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                out += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def cpu_seconds(pids) -> float:
    total = 0
    for pid in with_children(pids):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def with_loss(lab: Lab, pair: systems.Pair, fn):
    """fn() while the server's host drops 1 % of the UDP it receives, of either family."""
    rule = ["INPUT", "-p", "udp", "-m", "statistic", "--mode", "random", "--probability", "0.01", "-j", "DROP"]
    for tables in ("iptables", "ip6tables"):
        lab.nsexec(pair.server_ns, tables, "-w", "5", "-I", *rule)
    try:
        return fn()
    finally:
        for tables in ("iptables", "ip6tables"):
            lab.nsexec(pair.server_ns, tables, "-w", "5", "-D", *rule)


def measure_pair(lab: Lab, pair: systems.Pair, cells, seconds: float, repeat: int, pods=None, routed=None) -> dict:
    out = {c: [] for c in cells}
    for _ in range(repeat):
        for cell in cells:
            if cell == "tcp1":
                before, t0 = cpu_seconds(pair.pids), time.monotonic()
                out[cell].append(iperf(lab, pair, seconds)["value"])
                if "cpu" in cells:
                    out["cpu"].append(100 * (cpu_seconds(pair.pids) - before) / (time.monotonic() - t0))
            elif cell == "tcp4":
                b0, t0 = busy()
                out[cell].append(iperf(lab, pair, seconds, streams=4)["value"])
                b1, t1 = busy()
                out.setdefault("busy4", []).append(100 * (b1 - b0) / max(1, t1 - t0))
            elif cell == "pod":
                out[cell].append(iperf(lab, pods, seconds)["value"])
            elif cell == "podr":
                out[cell].append(iperf(lab, routed, seconds)["value"])
            elif cell == "loss1":
                out[cell].append(with_loss(lab, pair, lambda: iperf(lab, pair, seconds)["value"]))
            elif cell == "udp64":
                out[cell].append(iperf(lab, pair, seconds, udp64=True)["value"])
            elif cell == "rtt":
                r = rtt(lab, pair)
                out[cell].append(r["value"])
                out.setdefault("rtt_avg", []).append(r["avg"])
                out.setdefault("rtt_p90", []).append(r["p90"])
        for check in pair.cleanup:
            check()
    return {c: {"min": min(v), "median": statistics.median(v), "max": max(v), "runs": v} for c, v in out.items() if v}


ALL = ("tcp1", "tcp4", "pod", "loss1", "udp64", "rtt", "cpu")
NODE = ("tcp1", "tcp4", "loss1", "udp64", "rtt", "cpu")


def measure(seconds: float, repeat: int, only=None, compare: str | None = None) -> dict:
    rows = {}
    drops = {}
    scrapes = []
    with Lab() as lab:
        def run(name, pair, cells, pods=None, in_lab=lab, routed=None):
            if only and not any(o in name for o in only):
                return
            print(f"  {name} ...", file=sys.stderr, flush=True)
            if routed is not None:
                cells = (*cells, "podr")
            try:
                rows[name] = measure_pair(in_lab, pair, cells, seconds, repeat, pods, routed)
            except LabError as exc:  # a check after a run failed (a path left): that row, not the bench
                print(f"  {name} failed: {exc}", file=sys.stderr, flush=True)
                rows[name] = {"failed": str(exc)}

        run("raw veth", systems.raw_veth(lab), ("tcp1", "tcp4", "udp64", "rtt"))
        bridged, natted = systems.underlay(lab)
        run("underlay (bridged)", bridged, ("tcp1", "tcp4", "udp64", "rtt"))
        run("underlay (NATed)", natted, ("tcp1", "rtt"))
        run("kernel VXLAN, no tunnel", bridged, ("pod",), systems.vxlan(lab, bridged))
        wg = systems.wireguard_go(lab)
        run("wireguard-go direct", wg, ALL, systems.vxlan(lab, wg))
        neb_direct, neb_relayed = systems.nebula(lab)
        run("nebula direct", neb_direct, ALL, systems.vxlan(lab, neb_direct))
        run("nebula relayed", neb_relayed, NODE)
        ov, td_direct, td_relayed = systems.tunneld(lab)
        run("tunneld direct", td_direct, ALL, systems.vxlan(lab, td_direct),
            routed=systems.routed(lab, ov, td_direct, "pub-a", "pub-b"))
        run("tunneld relayed", td_relayed, ALL, systems.vxlan(lab, td_relayed),
            routed=systems.routed(lab, ov, td_relayed, "sender", "receiver"))
        drops = {n: ov.node_status(n)["drops"] for n in ov.nodes}
        drops["relay"] = ov.status(ov.relay)["drops"]
        scrapes = [scraped(path) for path in ov.scrapes]
    if not only or any(o in f"tunneld direct{ONE_WORKER} tunneld relayed{ONE_WORKER}" for o in only):
        with Lab() as lab:  # the same build on one process per node, for the workers' gain
            _, one_direct, one_relayed = systems.tunneld(lab, extra=("--workers", "1"))
            run(f"tunneld direct{ONE_WORKER}", one_direct, ("tcp1", "tcp4"), in_lab=lab)
            run(f"tunneld relayed{ONE_WORKER}", one_relayed, ("tcp1", "tcp4"), in_lab=lab)
    if not only or any(o in f"tunneld direct{WITH_POLICY}" for o in only):
        with Lab() as lab:  # the same build with a policy file: nftables and conntrack on tunneld0
            path = os.path.join(lab.tmp, "policy.toml")
            with open(path, "w") as f:
                f.write('[[allow]]\nfrom = ["100.64.0.0/10"]\nports = ["tcp", "udp", "icmp"]\n')
            _, pol_direct, _ = systems.tunneld(lab, extra=("--policy", path))
            run(f"tunneld direct{WITH_POLICY}", pol_direct, ("tcp1", "tcp4", "udp64", "rtt"), in_lab=lab)
    if not only or any(o in f"tunneld direct{IPV6} tunneld direct{IPV4_BESIDE}" for o in only):
        with Lab() as lab:  # a relay on both families: the overlay MTU counts IPv6's header
            six, four = systems.tunneld6(lab)
            run(f"tunneld direct{IPV6}", six, NODE, in_lab=lab)
            run(f"tunneld direct{IPV4_BESIDE}", four, NODE, in_lab=lab)
    if not only or any(o in "tunneld via two relays" for o in only):
        with Lab() as lab:  # a lab of its own: the relays take the addresses the single relay has
            run("tunneld via two relays", systems.tunneld_mesh(lab), NODE, in_lab=lab)
    published_rows = None
    if not only or any(o in "published port" for o in only):
        published_rows = published.measure(seconds, repeat)
    if compare:  # another release of tunneld, from this repository's history, in the same run
        from tests.lab.release import release_python
        python = release_python(compare)
        with Lab() as lab:
            _, old_direct, old_relayed = systems.tunneld(lab, python)
            run(f"tunneld {compare} direct", old_direct, ALL, systems.vxlan(lab, old_direct), in_lab=lab)
            run(f"tunneld {compare} relayed", old_relayed, ALL, systems.vxlan(lab, old_relayed), in_lab=lab)
    return {"rows": rows, "drops": drops, "scrapes": scrapes,
            **({"published": published_rows} if published_rows else {})}


def scraped(path: str) -> int:
    try:
        with open(path) as f:
            return int(f.read() or 0)
    except (OSError, ValueError):
        return 0


ONE_WORKER = ", --workers 1"
WITH_POLICY = ", --policy"  # every flow through a policy rule, every packet through conntrack
IPV6 = ", IPv6 underlay"  # IPv6-only hosts, direct over IPv6
IPV4_BESIDE = ", IPv4 beside IPv6"  # IPv4-only hosts on the same dual-stack relay (the same MTU)


def workers_line(rows: dict) -> str:
    """The default workers (one per core) against one process per node, same build, same run."""
    parts = []
    for path in ("direct", "relayed"):
        many, one = rows.get(f"tunneld {path}"), rows.get(f"tunneld {path}{ONE_WORKER}")
        if many and one:
            parts.append(f"{path} " + ", ".join(f"{c} {ratio(many[c]['median'], one[c]['median'])}x"
                                                 for c in ("tcp1", "tcp4") if c in many and c in one))
    if not parts:
        return ""
    line = f"workers ({len(os.sched_getaffinity(0))}, the default) against --workers 1: " + "; ".join(parts)
    loads = [f"{name} {rows[name]['busy4']['median']:.0f} %" for name in
             ("tunneld direct", f"tunneld direct{ONE_WORKER}", "tunneld relayed", f"tunneld relayed{ONE_WORKER}")
             if "busy4" in rows.get(name, {})]
    if loads:  # how much of the machine was left for more workers to use
        line += "\n  the machine's cores busy during tcp4 (all processes, kernel included): " + ", ".join(loads)
    return line


def rtt_line(rows: dict) -> str:
    """Each tunnel's pings beyond the median: a tail the table's cell would not show."""
    parts = [f"{name} {cells['rtt']['median']:.3f} / {cells['rtt_avg']['median']:.3f} / {cells['rtt_p90']['median']:.3f}"
             for name, cells in rows.items() if "rtt_avg" in cells and "rtt" in cells]
    return "rtt ms, median / average / 90th percentile of each run's pings (medians over runs): " + \
        "; ".join(parts) if parts else ""


def scale_line(s: dict, label: str = "relay scale") -> str:
    return (f"{label}: {s['joined']}/{s['nodes']} nodes joined, all within {s['all_joined_s']:.1f} s; "
            f"relay RSS {s['relay_rss_mb']:.0f} MB, idle CPU {s['relay_idle_cpu_pct']:.1f} % of a core"
            if s.get("all_joined_s") is not None else f"{label}: only {s['joined']}/{s['nodes']} nodes joined")


def relay_scale(count: int, timeout: float = 60.0, python: str | None = None) -> dict:
    """One relay, `count` joined nodes (bench/swarm.py): time until all have joined, the relay's
    memory, and its CPU over 10 s while they sit idle (pinging every 5 s, as nodes do).
    python: another release's relay (--compare)."""
    from tests.lab.overlay import Overlay
    with Lab() as lab:
        ov = Overlay(lab, relay_python=python)
        ov.start_relay()
        token = ov.token("--ttl", "1h")
        host = lab.public_host("swarm")
        swarm = subprocess.Popen(["ip", "netns", "exec", host.ns, sys.executable, os.path.join(HERE, "swarm.py"),
                                  ov.relay_endpoint, token, str(count), str(timeout)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        lab.processes.append(swarm)
        try:
            line = swarm.stdout.readline().decode()
            report = json.loads(line) if line else {"joined": 0}
            connected = sum(n["connected"] for n in ov.status(ov.relay)["nodes"])
            pid = ov.relay_proc.pid
            time.sleep(2)
            before, t0 = cpu_seconds([pid]), time.monotonic()
            time.sleep(10)
            idle = 100 * (cpu_seconds([pid]) - before) / (time.monotonic() - t0)
            with open(f"/proc/{pid}/status") as f:
                rss = next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024
        finally:
            lab.stop(swarm, timeout=5)
    return {"nodes": count, "joined": report.get("joined"), "connected_at_relay": connected,
            "all_joined_s": report.get("all_joined_s"), "relay_rss_mb": rss, "relay_idle_cpu_pct": idle}


def relay_capacity(size: int, seconds: float, workers: int = 1, pairs: int = 8) -> dict:
    """What one relay forwards: `pairs` senders each blasting datagrams of `size` bytes at a
    receiver through it (bench/swarm.py BLAST), from one process in a namespace of its own.
    The relay and the senders share this machine's cores: the figure is the relay's rate
    with one core left to it, the senders' own cost next to it (their CPU)."""
    from tests.lab.overlay import Overlay
    with Lab() as lab:
        ov = Overlay(lab)
        ov.start_relay("--workers", str(workers))
        token = ov.token("--ttl", "1h")
        host = lab.public_host("blast")
        swarm = subprocess.Popen(["ip", "netns", "exec", host.ns, sys.executable, os.path.join(HERE, "swarm.py"),
                                  ov.relay_endpoint, token, str(2 * pairs), "30", "BLAST", str(size), str(seconds)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        lab.processes.append(swarm)
        try:
            swarm.stdout.readline()  # joined
            pids = [ov.relay_proc.pid, *(w["pid"] for w in ov.status(ov.relay).get("workers", ()))]
            before, t0 = cpu_seconds(pids), time.monotonic()
            line = swarm.stdout.readline().decode()
            cpu = 100 * (cpu_seconds(pids) - before) / (time.monotonic() - t0)
        finally:
            lab.stop(swarm, timeout=5)
    out = json.loads(line) if line else {}
    return {**out, "relay_cpu_pct": cpu, "workers": workers}


def capacity_line(c: dict) -> str:
    return (f"relay capacity, {c.get('size')} B datagrams, {c.get('senders')} senders -> as many receivers, "
            f"{c.get('workers')} worker(s): {c.get('forwarded_pps', 0) / 1000:.1f} kpps, "
            f"{c.get('forwarded_gbps', 0):.3f} Gbit/s forwarded (relay CPU {c.get('relay_cpu_pct', 0):.0f} %)")


def relays_scale(count: int, relays: int, timeout: float = 60.0) -> dict:
    """`relays` relays of one network on a three-member etcd, `count` nodes spread over them:
    time until all have joined, and each relay's memory and CPU while the nodes sit idle."""
    from tests.lab.relays import Etcd, Relays
    with Lab() as lab:
        etcd = Etcd(lab)
        etcd.start_all()
        r = Relays(lab, etcd, count=relays)
        for i in range(relays):
            r.start(i)
        token = r.token(0, "--ttl", "1h", "--uses", "0")
        host = lab.public_host("swarm")
        swarm = subprocess.Popen(["ip", "netns", "exec", host.ns, sys.executable, os.path.join(HERE, "swarm.py"),
                                  ",".join(r.endpoint(i) for i in range(relays)), token, str(count), str(timeout)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        lab.processes.append(swarm)
        try:
            line = swarm.stdout.readline().decode()
            report = json.loads(line) if line else {"joined": 0}
            pids = [r.procs[i].pid for i in range(relays)]
            time.sleep(2)
            before, t0 = [cpu_seconds([p]) for p in pids], time.monotonic()
            time.sleep(10)
            idle = [100 * (cpu_seconds([p]) - b) / (time.monotonic() - t0) for p, b in zip(pids, before)]
            rss = []
            for p in pids:
                with open(f"/proc/{p}/status") as f:
                    rss.append(next(int(x.split()[1]) for x in f if x.startswith("VmRSS:")) / 1024)
        finally:
            lab.stop(swarm, timeout=5)
    return {"nodes": count, "relays": relays, "joined": report.get("joined"),
            "all_joined_s": report.get("all_joined_s"), "relay_rss_mb": max(rss), "relay_idle_cpu_pct": max(idle),
            "relay_idle_cpu_pcts": idle}


def ratio(v, ref):
    return f"{v / ref:.2f}" if ref else "-"


def table(result: dict) -> str:
    rows = result["rows"]
    raw = rows.get("raw veth", {})
    wg = rows.get("wireguard-go direct", {})
    neb = rows.get("nebula direct", {})
    lines = []
    head = f"{'':<26}" + "".join(f"{c + ' ' + UNITS[c]:>17}" for c in CELLS)
    lines.append(head)
    for name, cells in rows.items():
        line = f"{name:<26}"
        if "failed" in cells:
            lines.append(f"{line}failed: {cells['failed']}")
            continue
        for c in CELLS:
            if c in cells:  # ~: its runs spread by more than SPREAD, a cell one run may not settle
                v = cells[c]
                noisy = v["min"] > 0 and v["max"] / v["min"] - 1 > SPREAD
                line += f"{('~' if noisy else '') + format(v['median'], '.3f'):>17}"
            else:
                line += f"{'':>17}"
        lines.append(line)
        for label, ref, skip in (("  x raw veth", raw, name in ("raw veth", "wireguard-go direct")),
                                 ("  x wireguard-go", wg, name in ("raw veth", "wireguard-go direct")),
                                 ("  x nebula direct", neb, not name.startswith("tunneld"))):
            if skip or not ref:
                continue
            line = f"{label:<26}"
            for c in CELLS:
                base = ref.get(c) or (raw.get("tcp1") if c in ("pod", "podr", "loss1") and label == "  x raw veth"
                                      else ref.get("pod") if c == "podr" else None)
                line += f"{ratio(cells[c]['median'], base['median']):>17}" if c in cells and base else f"{'':>17}"
            lines.append(line)
    return "\n".join(lines)


REFERENCES = ("raw veth", "underlay (bridged)", "underlay (NATed)", "kernel VXLAN, no tunnel")


def chart(result: dict, path: str, title: str) -> bool:
    """One panel per cell: the tunnels as bars (linear, so lengths compare), the machine's
    limits named in the axis label (they are tens of times longer)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = {name: cells for name, cells in result["rows"].items() if "failed" not in cells}
    shown = [c for c in ("tcp1", "tcp4", "pod", "podr", "loss1", "udp64", "rtt") if any(c in r for r in rows.values())]
    if not shown:  # only rows of their own (--only "published port"): the table says it all
        return False
    fig, axes = plt.subplots(len(shown), 1, figsize=(8, 1.9 * len(shown)), constrained_layout=True)
    for ax, c in zip(axes, shown):
        names = [n for n in rows if c in rows[n] and n not in REFERENCES]
        med = [rows[n][c]["median"] for n in names]
        err = [[m - rows[n][c]["min"] for n, m in zip(names, med)], [rows[n][c]["max"] - m for n, m in zip(names, med)]]
        colors = ["#2b7bba" if n.startswith("tunneld") else "#999999" for n in names]
        ax.barh(names, med, xerr=err, color=colors)
        for y, m in enumerate(med):
            ax.text(m, y, f" {m:.3g}", va="center", fontsize=8)
        ax.invert_yaxis()
        refs = ", ".join(f"{n} {rows[n][c]['median']:.3g}" for n in REFERENCES if c in rows.get(n, {}))
        ax.set_xlabel(f"{c} ({UNITS[c]}{', lower is better' if c == 'rtt' else ''})"
                      + (f"   [{refs}]" if refs else ""), fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.set_xlim(0, max(med) * 1.2)
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=90)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="3 s per cell, once (the default)")
    mode.add_argument("--full", action="store_true", help="10 s per cell, 3 times: min/median/max")
    ap.add_argument("--seconds", type=float, help="per cell")
    ap.add_argument("--repeat", type=int, help="runs per cell")
    ap.add_argument("--only", action="append", help="rows whose name contains this (repeatable)")
    ap.add_argument("--nodes", type=int, default=500, help="joined nodes for the relay's scale cell [500]; 0 skips it")
    ap.add_argument("--relays", type=int, default=0, help="also run the scale cell on this many relays sharing "
                                                          "etcd [0: skip]")
    ap.add_argument("--relay-nodes", type=int, default=0, help="nodes for that cell [--nodes]")
    ap.add_argument("--compare", metavar="REV", help="also measure tunneld at REV (a tag such as v0.1.0, or a "
                    "commit of this repository) in the same run, in a venv of its own")
    ap.add_argument("--capacity", type=int, default=1, metavar="0|1",
                    help="the relay's own capacity, 1,400 and 64 B datagrams [1; 0 skips it]")
    ap.add_argument("--budget", action="store_true", help="only the per-packet budget (bench/budget.py): µs per "
                    "packet per stage of the data path; with --compare REV, REV's beside it")
    ap.add_argument("--json", metavar="FILE", help="write the run here [bench/results/DATE.json]")
    ap.add_argument("--chart", metavar="FILE", help="draw the table here [bench/results/DATE.png]")
    args = ap.parse_args(argv)
    if args.budget:
        import budget
        return budget.main([*(("--compare", args.compare) if args.compare else ()),
                            *(("--json", args.json) if args.json else ())])
    seconds = args.seconds or (10.0 if args.full else 3.0)
    repeat = args.repeat or (3 if args.full else 1)
    if seconds <= 0 or repeat < 1:
        print("bench: --seconds must be positive and --repeat at least 1", file=sys.stderr)
        return 2
    started = time.strftime("%Y-%m-%d %H:%M")
    stamp = time.strftime("%Y-%m-%d-%H%M")
    try:
        result = measure(seconds, repeat, args.only, args.compare)
        if args.nodes > 0:
            print(f"  relay scale, {args.nodes} nodes ...", file=sys.stderr, flush=True)
            result["scale"] = relay_scale(args.nodes)
        if args.capacity:
            result["capacity"] = []
            for size in (1400, 64):
                for workers in sorted({1, len(os.sched_getaffinity(0))}):
                    print(f"  relay capacity, {size} B, {workers} worker(s) ...", file=sys.stderr, flush=True)
                    result["capacity"].append(relay_capacity(size, seconds, workers))
        if args.relays > 0:
            n = args.relay_nodes or args.nodes
            print(f"  {args.relays} relays on etcd, {n} nodes ...", file=sys.stderr, flush=True)
            result["relays_scale"] = relays_scale(n, args.relays)
            if args.compare:
                from tests.lab.release import release_python
                print(f"  relay scale, {args.nodes} nodes, tunneld {args.compare} ...", file=sys.stderr, flush=True)
                result["scale_compare"] = relay_scale(args.nodes, python=release_python(args.compare))
    except (LabError, subprocess.SubprocessError, KeyError, ValueError, OSError) as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        return 1
    machine = (f"{platform.node()} ({platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
               f"kernel {platform.release()})")
    title = f"tunneld bench, {started}, {machine}, {seconds:.0f} s x {repeat} per cell, medians"
    print(f"\n{title}\n")
    if result["rows"]:
        print(table(result))
    if rtt_line(result["rows"]):
        print("\n" + rtt_line(result["rows"]))
    if workers_line(result["rows"]):
        print("\n" + workers_line(result["rows"]))
    if result.get("scrapes") and ("tunneld direct" in result["rows"] or "tunneld relayed" in result["rows"]):
        print(f"\nmetrics: the rows 'tunneld direct' and 'tunneld relayed' ran with --metrics on the relay and "
              f"every node, each scraped every second throughout ({sum(result['scrapes'])} scrapes, "
              f"{min(result['scrapes'])} to {max(result['scrapes'])} per daemon)"
              + (f"; the 'tunneld {args.compare}' rows ran that revision as it was" if args.compare else ""))
    if "published" in result:
        print("\n" + published.table(result["published"]))
    if "scale" in result:
        print("\n" + scale_line(result["scale"]))
    for c in result.get("capacity", ()):
        print(capacity_line(c))
    if "scale_compare" in result:
        print(scale_line(result["scale_compare"], f"relay scale, tunneld {args.compare}"))
    if "relays_scale" in result:
        rs = result["relays_scale"]
        print(scale_line(rs, f"{rs['relays']} relays on etcd") + " (the busiest relay)")
    nonzero = {k: v for k, v in result["drops"].items() if v}
    if nonzero:
        print("\ntunneld drops during the run:", json.dumps(nonzero))
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    json_path = args.json or os.path.join(HERE, "results", f"{stamp}.json")
    with open(json_path, "w") as f:
        json.dump({"date": started, "machine": machine, "seconds": seconds, "repeat": repeat,
                   "versions": versions(), **result}, f, indent=1)
    chart_path = args.chart or os.path.join(HERE, "results", f"{stamp}.png")
    drawn = chart(result, chart_path, title)
    print(f"\nwrote {json_path}" + (f" and {chart_path}" if drawn else ""))
    return 0


def versions() -> dict:
    out = {}
    for pkg in ("wireguard-go", "nebula", "iperf3"):
        r = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True, text=True)
        out[pkg] = r.stdout.strip() or "?"
    return out


if __name__ == "__main__":
    sys.exit(main())
