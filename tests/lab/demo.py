"""bin/demo: tunneld's main job on one machine, in network namespaces, then a clean teardown.

  relay   192.0.2.1:7000          a public host: `tunneld serve`
  public  198.51.100.11           a node with a public address
  natted  198.19.1.2 behind NAT   a node behind MASQUERADE (its address is not public)
  hidden  198.19.2.2 behind NAT   a node behind MASQUERADE --random-fully that accepts
                                  no unsolicited inbound at all
  outside 198.51.100.x           a host with no tunneld at all
Pairs go direct where the NATs allow it and through the relay where they do not; then
the relay publishes a service of hidden on its own port, and outside fetches from it.
"""

from __future__ import annotations

import shlex
import sys
import time

import os

from . import Lab, LabError, wait_for
from .overlay import NETWORK6, Overlay, transfer
from .services import FETCH, SERVICE, expected

TRANSFER_BYTES = 20_000_000


def _say(text: str = "") -> None:
    print(text, flush=True)


def _cmd(lab: Lab, host, *args: str) -> str:
    shown = "tunneld " + " ".join(shlex.quote(a) for a in args)
    _say(f"  [{host.ns.split('-', 1)[1]}] $ {shown}")
    out = lab.nsexec(host.ns, sys.executable, "-m", "tunneld", *args).stdout.decode()
    for line in out.rstrip().splitlines():
        _say("    " + line)
    return out


def main() -> int:
    lab = Lab()
    try:
        _say("== building a small internet in network namespaces")
        ov = Overlay(lab)
        hosts = {"public": lab.public_host("public"), "natted": lab.nat_host("natted", "cone"),
                 "hidden": lab.nat_host("hidden", "no-inbound")}
        _say(f"  relay  {ov.relay.address} (public)")
        _say(f"  public {hosts['public'].address} (public)")
        _say(f"  natted {hosts['natted'].address} behind NAT {hosts['natted'].public} (MASQUERADE)")
        _say(f"  hidden {hosts['hidden'].address} behind NAT {hosts['hidden'].public} "
             "(MASQUERADE --random-fully, no inbound at all)")

        _say("\n== the relay")
        config = os.path.join(lab.tmp, "relay.toml")
        with open(config, "w") as f:
            f.write('allow-ports = ["18000-18999"]\n')  # the ports it may publish
        ov.start_relay("--config", config)
        _say(f"  [relay] $ tunneld serve --listen {ov.relay_endpoint} --network6 {NETWORK6} --state-dir "
             f"{ov.relay.state_dir} --config relay.toml &      (relay.toml: allow-ports = [\"18000-18999\"])")
        token = _cmd(lab, ov.relay, "token", "--state-dir", ov.relay.state_dir, "--ttl", "1h",
                     "--uses", str(len(hosts))).strip()

        _say("\n== three nodes join")
        started = time.monotonic()
        for name, host in hosts.items():
            _say(f"  [{name}] $ tunneld join --relay {ov.relay_endpoint} --token-file {name}.token "
                 f"--name {name} --state-dir {host.state_dir} &      ({name}.token: {token[:12]}...)")
            ov.join(host, name, token)
        ov.wait_connected()
        _say(f"  all three connected and ready in {time.monotonic() - started:.1f} s")

        _say("\n== every node pings every other over tunneld0")
        failures = 0
        for src in hosts:
            for dst in hosts:
                if src == dst:
                    continue
                r = ov.ping(src, ov.address(dst), count=3)
                summary = r.stdout.decode().strip().splitlines()[-1] if r.returncode == 0 else "FAILED"
                failures += r.returncode != 0
                _say(f"  {src:>6} -> {dst:<6} {ov.address(dst):<12} {summary}")
        _say("\n== ... and over its IPv6 overlay address (the IPv4 one in the last 32 bits)")
        for src, dst in (("public", "hidden"), ("hidden", "natted")):
            six = ov.node_status(dst)["address6"]
            r = lab.nsexec(hosts[src].ns, "ping", "-6", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", six,
                           check=False)
            summary = r.stdout.decode().strip().splitlines()[-1] if r.returncode == 0 else "FAILED"
            failures += r.returncode != 0
            _say(f"  {src:>6} -> {dst:<6} {six:<21} {summary}")

        _say("\n== status")
        _cmd(lab, ov.relay, "status", "--state-dir", ov.relay.state_dir)
        _cmd(lab, hosts["hidden"], "status", "--state-dir", hosts["hidden"].state_dir)

        ok = True
        for src, why in (("public", "hidden has no inbound path, but its own packets open one back"),
                         ("natted", "two NATs that each let in only what they sent to: the relay")):
            _say(f"\n== {TRANSFER_BYTES // 1_000_000} MB over TCP from {src} to hidden:10250 "
                 "(the port kubelet serves)")
            started = time.monotonic()
            sent, received = transfer(ov, src, "hidden", 10250, TRANSFER_BYTES)
            elapsed = time.monotonic() - started
            peer = next(p for p in ov.node_status(src)["peers"] if p["name"] == "hidden")
            ok = ok and sent == received
            _say(f"  sent     {sent}\n  received {received}")
            _say(f"  {'byte-exact' if sent == received else 'MISMATCH'}, "
                 f"{TRANSFER_BYTES * 8 / elapsed / 1e6:.0f} Mbit/s, encrypted end to end, "
                 f"path {peer['path']} ({why})")

        ok = ok and _publish(lab, ov, hosts["hidden"])
        if failures or not ok:
            _say("\nthe demo FAILED; logs are above")
            return 1
        _say("\n== tearing down (namespaces, processes, state)")
        return 0
    except LabError as exc:
        _say(f"\nthe demo FAILED: {exc}")
        for name in ("relay", "public", "natted", "hidden"):
            _say(f"--- {name} log ---\n{lab.log(name)[-3000:]}")
        return 1
    finally:
        lab.close()
        _say("done: nothing is left behind")


def _publish(lab: Lab, ov: Overlay, hidden) -> bool:
    """frp's job: hidden's service on the relay's port, for a host with no tunneld."""
    _say("\n== publishing: a service of hidden (no inbound) on the relay's port, for a host outside the "
         "overlay")
    address = ov.address("hidden")
    lab.spawn(hidden.ns, sys.executable, "-c", SERVICE, address, "8080", str(TRANSFER_BYTES),
              env={"PYTHONPATH": os.getcwd()})
    _say(f"  [hidden] a service on {address}:8080 sends {TRANSFER_BYTES // 1_000_000} MB to each connection")
    _cmd(lab, ov.relay, "publish", "add", "web", "hidden:8080", "--remote-port", "18080",
         "--state-dir", ov.relay.state_dir)
    wait_for(lambda: any(p["name"] == "web" for p in ov.node_status("hidden").get("published", [])), 20,
             what="hidden to be told")
    outside = lab.public_host("outside")
    started = time.monotonic()
    got = lab.nsexec(outside.ns, sys.executable, "-c", FETCH, ov.relay.address, "18080", timeout=60)
    elapsed = time.monotonic() - started
    ok = got.stdout.decode().strip() == expected(TRANSFER_BYTES)
    _say(f"  [outside {outside.address}, no tunneld] fetched {ov.relay.address}:18080: "
         f"{'byte-exact' if ok else 'MISMATCH'}, {TRANSFER_BYTES * 8 / elapsed / 1e6:.0f} Mbit/s")
    _cmd(lab, ov.relay, "publish", "list", "--state-dir", ov.relay.state_dir)
    return ok


if __name__ == "__main__":
    sys.exit(main())
