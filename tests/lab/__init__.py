"""A small internet in network namespaces, for the demo, the tests and the benchmarks.
Test tooling, not part of the installed package: bin/demo, tests/ and bench/ use it
from the checkout.

    relay 192.0.2.1 ─┐
                     │ br-relay 192.0.2.254
    public nodes ────┤ br-pub   198.51.100.254      "inet": the router of the internet
    198.51.100.x     │
                     │ br-nat   203.0.113.254
    NAT routers ─────┘  wan 203.0.113.x  ── lan 198.19.N.1 ── host 198.19.N.2

NAT kinds (iptables in the router's namespace):
  "cone"        MASQUERADE: port-preserving, address and port restricted (as a home router's
                firewall: nothing unsolicited reaches the router itself, so an early punch
                leaves no conntrack entry behind that would make it remap the port)
  "symmetric"   MASQUERADE --random-fully: a new external port for every destination
  "no-inbound"  MASQUERADE --random-fully, and nothing unsolicited gets in
  "no-udp"      MASQUERADE, and all UDP is dropped both ways
Several hosts can share one NAT's LAN (nat_host(..., behind=another_host)).

IPv6 where a host asks for it (ipv6=True; ipv4=False for a host with no IPv4 at all): each
segment has a /64 of 2001:db8::/32 beside its IPv4 one, and a NAT router routes a /64 of its
own to its LAN, unNATed (as ISPs delegate a prefix), its hosts' IPv6 open to the internet:

    relay 2001:db8:0:1::1        public nodes 2001:db8:0:2::N      NAT routers' WAN 2001:db8:0:3::N
    the LAN of NAT router N      2001:db8:1:N::/64, the router ::1, its hosts ::2, ::3 ...

Addresses come only from ranges reserved for documentation and testing, and nothing
leaves the namespaces:
  "public" underlay   192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 (RFC 5737); IPv6 2001:db8::/32 (RFC 3849)
  LANs behind NAT     198.19.0.0/16 (RFC 2544's benchmarking range)
  pod networks        198.18.0.0/16 (likewise)
  the overlay         100.64.0.0/10 (RFC 6598), tunneld's default
It shells out to ip and iptables on purpose, so that what it builds reads like the
commands an operator would type. Processes are stopped by their own PID; close()
removes everything, also after a failure.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

BRIDGES = {
    "relay": ("br-relay", "192.0.2.254", 24),
    "pub": ("br-pub", "198.51.100.254", 24),
    "nat": ("br-nat", "203.0.113.254", 24),
}
GATEWAYS6 = {"relay": "2001:db8:0:1::fe", "pub": "2001:db8:0:2::fe", "nat": "2001:db8:0:3::fe"}  # /64 each


class LabError(Exception):
    pass


@dataclass
class Host:
    ns: str
    address: str  # its address on its own link
    public: str  # the address the internet sees it as (the NAT's, behind one)
    router: "Host | None" = None
    state_dir: str = ""
    address6: str = ""  # its global IPv6 address, where it has IPv6
    procs: list = field(default_factory=list)
    lan: int = 0  # a router's LAN number N (198.19.N.0/24), and how many hosts it has
    hosts: int = 0


class Lab:
    _made = itertools.count(1)  # labs of this process: a module's lab may outlive several others

    def __init__(self, tag: str | None = None):
        # Unique among the labs alive at once: the process, and its count of labs (a clock's
        # milliseconds once gave two labs of one test module the same namespaces).
        self.tag = tag or f"td{os.getpid() % 100000}x{next(Lab._made)}"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen] = []
        self.tmp = tempfile.mkdtemp(prefix=f"tunneld-{self.tag}-")
        self._nat_count = 0
        self._pub_count = 0
        self._pub6_count = 0
        self.inet: str | None = None

    # -- plumbing ----------------------------------------------------------------------

    def run(self, *cmd: str, check: bool = True, timeout: float = 30, input: bytes | None = None):
        proc = subprocess.run(cmd, capture_output=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise LabError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.decode().strip()}")
        return proc

    def nsexec(self, ns: str, *cmd: str, check: bool = True, timeout: float = 30, input: bytes | None = None):
        return self.run("ip", "netns", "exec", ns, *cmd, check=check, timeout=timeout, input=input)

    def add_namespace(self, short: str) -> str:
        name = f"{self.tag}-{short}"
        self.run("ip", "netns", "add", name)
        self.namespaces.append(name)
        self.run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def sysctl(self, ns: str, key: str, value: str) -> None:
        self.nsexec(ns, "sysctl", "-qw", f"{key}={value}")

    def veth(self, ns_a: str, name_a: str, ns_b: str, name_b: str, mtu: int | None = None) -> None:
        """A veth pair made directly inside two namespaces (nothing touches the root namespace)."""
        self.run("ip", "-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)
        for ns, name in ((ns_a, name_a), (ns_b, name_b)):
            if mtu:
                self.run("ip", "-n", ns, "link", "set", name, "mtu", str(mtu))
            self.run("ip", "-n", ns, "link", "set", name, "up")

    def addr(self, ns: str, dev: str, cidr: str) -> None:
        self.run("ip", "-n", ns, "addr", "add", cidr, "dev", dev)

    # -- the internet ------------------------------------------------------------------

    def internet(self) -> str:
        if self.inet is None:
            self.inet = self.add_namespace("inet")
            self.sysctl(self.inet, "net.ipv4.ip_forward", "1")
            self.sysctl(self.inet, "net.ipv6.conf.all.forwarding", "1")
            for segment, (bridge, address, prefix) in BRIDGES.items():
                self.run("ip", "-n", self.inet, "link", "add", bridge, "type", "bridge")
                self.addr(self.inet, bridge, f"{address}/{prefix}")
                self.addr6(self.inet, bridge, f"{GATEWAYS6[segment]}/64")
                self.run("ip", "-n", self.inet, "link", "set", bridge, "up")
        return self.inet

    def addr6(self, ns: str, dev: str, cidr: str) -> None:
        """An IPv6 address usable at once (no duplicate address detection: the lab's are unique)."""
        self.run("ip", "-n", ns, "addr", "add", cidr, "dev", dev, "nodad")

    def _attach(self, ns: str, dev: str, segment: str, address: str | None, mtu: int | None,
                address6: str | None = None) -> None:
        inet = self.internet()
        bridge, gateway, prefix = BRIDGES[segment]
        port = f"p{len(self.namespaces)}"
        self.veth(ns, dev, inet, port, mtu)
        self.run("ip", "-n", inet, "link", "set", port, "master", bridge)
        if address:
            self.addr(ns, dev, f"{address}/{prefix}")
            self.run("ip", "-n", ns, "route", "add", "default", "via", gateway)
        if address6:
            self.addr6(ns, dev, f"{address6}/64")
            self.run("ip", "-n", ns, "-6", "route", "add", "default", "via", GATEWAYS6[segment])

    def public_host(self, short: str, segment: str = "pub", address: str | None = None,
                    mtu: int | None = None, ipv6: bool = False, ipv4: bool = True) -> Host:
        """ipv6: a global IPv6 address too; ipv4=False: IPv6 alone, no IPv4 address at all."""
        ns = self.add_namespace(short)
        if address is None and ipv4:
            if segment == "relay":
                address = "192.0.2.1"
            else:
                self._pub_count += 1
                address = f"198.51.100.{10 + self._pub_count}"
        address6 = None
        if ipv6 or not ipv4:
            self._pub6_count += segment != "relay"
            address6 = "2001:db8:0:1::1" if segment == "relay" else f"2001:db8:0:2::{10 + self._pub6_count:x}"
        self._attach(ns, "eth0", segment, address if ipv4 else None, mtu, address6)
        return Host(ns, address or address6, address or address6, state_dir=self._state_dir(short),
                    address6=address6 or "")

    def nat_host(self, short: str, kind: str = "cone", lan_mtu: int | None = None,
                 behind: Host | None = None, ipv6: bool = False) -> Host:
        """A host on a LAN behind a NAT router: a new router, or the router of `behind`.
        ipv6: the router routes an IPv6 /64 to its LAN, and the host has a public IPv6 address."""
        if behind is not None:
            router = behind.router
        else:
            router = self._nat_router(short, kind, lan_mtu)
            if ipv6:
                self._route6(router)
        router.hosts += 1
        n, i = router.lan, router.hosts + 1
        hns = self.add_namespace(short)
        self.veth(router.ns, f"h{i}", hns, "eth0", lan_mtu)
        self.run("ip", "-n", router.ns, "link", "set", f"h{i}", "master", "lan")
        lan_host = f"198.19.{n}.{i}"
        self.addr(hns, "eth0", f"{lan_host}/24")
        self.run("ip", "-n", hns, "route", "add", "default", "via", f"198.19.{n}.1")
        address6 = ""
        if router.address6:
            address6 = f"2001:db8:1:{n:x}::{i:x}"
            self.addr6(hns, "eth0", f"{address6}/64")
            self.run("ip", "-n", hns, "-6", "route", "add", "default", "via", f"2001:db8:1:{n:x}::1")
        return Host(hns, lan_host, router.public, router=router, state_dir=self._state_dir(short), address6=address6)

    def _route6(self, router: Host) -> None:
        """IPv6 through a NAT router: a WAN address, and a /64 routed to its LAN (no NAT)."""
        n = router.lan
        router.address6 = f"2001:db8:0:3::{10 + n:x}"
        self.addr6(router.ns, "wan", f"{router.address6}/64")
        self.run("ip", "-n", router.ns, "-6", "route", "add", "default", "via", GATEWAYS6["nat"])
        self.addr6(router.ns, "lan", f"2001:db8:1:{n:x}::1/64")
        self.sysctl(router.ns, "net.ipv6.conf.all.forwarding", "1")
        self.run("ip", "-n", self.internet(), "-6", "route", "add", f"2001:db8:1:{n:x}::/64", "via", router.address6)

    def _nat_router(self, short: str, kind: str, lan_mtu: int | None) -> Host:
        if kind not in ("cone", "symmetric", "no-inbound", "no-udp"):
            raise LabError(f"unknown NAT kind {kind}")
        self._nat_count += 1
        n = self._nat_count
        wan = f"203.0.113.{10 + n}"
        rns = self.add_namespace(f"{short}-gw")
        self._attach(rns, "wan", "nat", wan, None)
        self.sysctl(rns, "net.ipv4.ip_forward", "1")
        self.run("ip", "-n", rns, "link", "add", "lan", "type", "bridge")
        if lan_mtu:
            self.run("ip", "-n", rns, "link", "set", "lan", "mtu", str(lan_mtu))
        self.addr(rns, "lan", f"198.19.{n}.1/24")
        self.run("ip", "-n", rns, "link", "set", "lan", "up")
        ipt = ["iptables", "-w", "5"]
        masq = [*ipt, "-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]
        if kind in ("symmetric", "no-inbound"):
            masq.append("--random-fully")
        self.nsexec(rns, *masq)
        if kind in ("cone", "no-inbound"):
            for chain in ("FORWARD", "INPUT") if kind == "no-inbound" else ("INPUT",):
                self.nsexec(rns, *ipt, "-A", chain, "-i", "wan", "-m", "conntrack",
                            "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
                self.nsexec(rns, *ipt, "-A", chain, "-i", "wan", "-j", "DROP")
        if kind == "no-udp":
            for direction in ("-i", "-o"):
                self.nsexec(rns, *ipt, "-A", "FORWARD", direction, "wan", "-p", "udp", "-j", "DROP")
        return Host(rns, wan, wan, lan=n)

    def _state_dir(self, short: str) -> str:
        path = os.path.join(self.tmp, short)
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    # -- processes ---------------------------------------------------------------------

    def spawn(self, ns: str, *cmd: str, log: str | None = None, env: dict | None = None) -> subprocess.Popen:
        out = open(log, "ab") if log else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=out, stderr=subprocess.STDOUT
                                    if log else subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **(env or {})})
        finally:
            if log:
                out.close()
        self.processes.append(proc)
        return proc

    def tunneld(self, host: Host, *args: str, log_name: str | None = None, env: dict | None = None,
                wrap: tuple[str, ...] = (), python: str | None = None):
        """Start `tunneld ARGS` in host's namespace (ip netns exec execs it: proc.pid is tunneld),
        optionally under a wrapper that execs too (e.g. setpriv, to drop capabilities), and
        optionally another release's python (release.py)."""
        log = os.path.join(self.tmp, f"{log_name or os.path.basename(host.state_dir)}.log")
        proc = self.spawn(host.ns, *wrap, *tunneld_command(python), *args, log=log,
                          env={"PYTHONUNBUFFERED": "1", **(env or {})})
        host.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        return proc.returncode

    def log(self, name: str) -> str:
        try:
            with open(os.path.join(self.tmp, f"{name}.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def close(self) -> None:
        for proc in reversed(self.processes):
            try:
                self.stop(proc, timeout=5)
            except Exception:
                pass
        for ns in reversed(self.namespaces):
            self.run("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def tunneld_command(python: str | None = None) -> list[str]:
    """How to run tunneld: this checkout's, or (python given) another release's, isolated from
    the checkout in the current directory."""
    return [sys.executable, "-m", "tunneld"] if python is None else [python, "-I", "-m", "tunneld"]


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll predicate until it returns a truthy value; bounded in time."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except LabError:
            raise  # definitive: a daemon died, waiting longer cannot help
        except Exception as exc:  # the daemon may not be up yet
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise LabError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def overlay_ip(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)
