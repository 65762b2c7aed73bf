"""The bench's published-port rows: frp's job, measured next to socat doing the same on the
relay's host, in the same run.

A client outside the overlay (no tunneld) reaches a service on a node through a port of
the relay's public address:
  tunneld publish   the relay's published port (tunneld publish add), the node on a
                    no-inbound NAT: work connections the node opens, every hop sealed
  socat             socat on the relay's host forwarding the same kind of port to the
                    node's public address (plain TCP, no encryption, a node reachable
                    from the relay: what frp's users would otherwise run)
Cells:
  down    iperf3 -R through the port, the service sending, Gbit/s
  up      iperf3 through the port, the client sending, Gbit/s
  conn/s  connections a second, each opened, answered with 1 KiB and closed, 16 at once
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from tests.lab import Lab, wait_for
from tests.lab.overlay import Overlay

CELLS = ("down", "up", "conns")
UNITS = {"down": "Gbit/s", "up": "Gbit/s", "conns": "conn/s"}

# 1 KiB to each connection, then the end; threaded, as a small service would be.
ANSWER = r"""
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(512)
def one(c):
    try:
        c.sendall(b"x" * 1024)
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=one, args=(c,), daemon=True).start()
"""

# Connections a second for argv[3] s, 16 at once; each must bring its whole KiB.
RATE = r"""
import asyncio, sys, time
host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
async def worker(end, done):
    while time.monotonic() < end:
        r, w = await asyncio.open_connection(host, port)
        got = b""
        while len(got) < 1024:
            b = await r.read(2048)
            if not b: break
            got += b
        w.close()
        if len(got) == 1024:
            done[0] += 1
        else:
            done[1] += 1
async def main():
    done = [0, 0]
    start = time.monotonic()
    await asyncio.gather(*(worker(start + seconds, done) for _ in range(16)))
    print(done[0] / (time.monotonic() - start), done[1])
asyncio.run(main())
"""


def setup(lab: Lab) -> dict:
    ov = Overlay(lab)
    with open(f"{lab.tmp}/relay.toml", "w") as f:
        f.write('allow-ports = ["18000-18999"]\n')
    ov.start_relay("--config", f"{lab.tmp}/relay.toml")
    token = ov.token()
    hidden = lab.nat_host("svc", "no-inbound")
    public = lab.public_host("svcpub")
    ov.join(hidden, "svc", token)
    ov.wait_connected()
    client = lab.public_host("client")
    for host in (hidden, public):
        lab.spawn(host.ns, "iperf3", "-s", "-p", "5201")
        lab.spawn(host.ns, sys.executable, "-c", ANSWER, "8000")
    for host in (hidden, public):
        wait_for(lambda h=host: lab.nsexec(h.ns, "ss", "-Hltn", "sport = :8000").stdout.strip(), 10,
                 what="the services to listen")
    relay_cli = [sys.executable, "-m", "tunneld", "publish", "add"]
    for name, port, remote in (("iperf", 5201, 18201), ("answer", 8000, 18000)):
        lab.nsexec(ov.relay.ns, *relay_cli, name, f"svc:{port}", "--remote-port", str(remote),
                   "--state-dir", ov.relay.state_dir)
    wait_for(lambda: all(r["node_connected"] for r in ov.status(ov.relay)["published"])
             and len(ov.node_status("svc").get("published", ())) == 2, 20, what="the services to be published")
    for port, remote in ((5201, 18301), (8000, 18100)):  # socat: the same ports, plain, to the public node
        lab.spawn(ov.relay.ns, "socat", f"TCP-LISTEN:{remote},fork,reuseaddr,backlog=512",
                  f"TCP:{public.address}:{port}")
    wait_for(lambda: lab.nsexec(ov.relay.ns, "ss", "-Hltn", "sport = :18100").stdout.strip(), 10,
             what="socat to listen")
    return {"ov": ov, "client": client,
            "rows": {"tunneld publish": (18201, 18000), "socat on the relay host": (18301, 18100)}}


def iperf(lab: Lab, ns: str, host: str, port: int, seconds: float, reverse: bool) -> float:
    cmd = ["iperf3", "-c", host, "-p", str(port), "-t", str(seconds), "-J", *(["-R"] if reverse else [])]
    out = lab.nsexec(ns, *cmd, timeout=seconds + 30)
    return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9


def rate(lab: Lab, ns: str, host: str, port: int, seconds: float) -> float:
    out = lab.nsexec(ns, sys.executable, "-c", RATE, host, str(port), str(seconds), timeout=seconds + 60)
    value, failed = out.stdout.split()
    if int(failed):
        raise ValueError(f"{failed} connections through port {port} did not bring their answer")
    return float(value)


def measure(seconds: float, repeat: int) -> dict:
    """{row: {cell: {"min", "median", "max"}}}, the rows measured turn about, repeat times."""
    with Lab() as lab:
        s = setup(lab)
        ov, client, relay = s["ov"], s["client"], s["ov"].relay.address
        runs: dict = {row: {c: [] for c in CELLS} for row in s["rows"]}
        for _ in range(repeat):
            for row, (data_port, answer_port) in s["rows"].items():
                print(f"  published port: {row} ...", file=sys.stderr, flush=True)
                runs[row]["down"].append(iperf(lab, client.ns, relay, data_port, seconds, True))
                runs[row]["up"].append(iperf(lab, client.ns, relay, data_port, seconds, False))
                runs[row]["conns"].append(rate(lab, client.ns, relay, answer_port, seconds))
                time.sleep(0.5)
        errors = {r["name"]: r["errors"] for r in ov.status(ov.relay)["published"]}
    out = {row: {c: {"min": min(v), "median": statistics.median(v), "max": max(v)} for c, v in cells.items()}
           for row, cells in runs.items()}
    return {"rows": out, "errors": errors}


def table(result: dict) -> str:
    rows = result["rows"]
    ref = rows.get("socat on the relay host", {})
    lines = [f"{'published port':<26}" + "".join(f"{c + ' (' + UNITS[c] + ')':>22}" for c in CELLS)]
    for row, cells in rows.items():
        line = f"{row:<26}"
        for c in CELLS:
            v = cells[c]["median"]
            text = f"{v:.2f}" if UNITS[c] == "Gbit/s" else f"{v:.0f}"
            if row != "socat on the relay host" and ref.get(c, {}).get("median"):
                text += f" ({v / ref[c]['median']:.2f}x)"
            line += f"{text:>22}"
        lines.append(line)
    errors = result["errors"]
    if isinstance(errors, dict):
        errors = ", ".join(f"{n} {k}" for k, n in sorted(errors.items()))
    lines.append(f"(connections cut with an error on the published ports during the run: {errors})")
    return "\n".join(lines)
