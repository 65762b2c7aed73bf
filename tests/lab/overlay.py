"""A relay and nodes inside a Lab, driven through tunneld's own CLI and control socket."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

from tunneld.net.ctlsock import request
from tunneld.state import SOCKET_FILE
from . import Host, Lab, LabError, tunneld_command, wait_for

RELAY_PORT = 7000


NETWORK6 = "2001:db8:64::/64"  # the lab overlay's IPv6 prefix


class Overlay:
    def __init__(self, lab: Lab, port: int = RELAY_PORT, relay_python: str | None = None,
                 relay_module: str | None = None, relay_env: dict | None = None, relay_ipv6: bool = False):
        """relay_python: run another release's relay (tests/lab/release.py); relay_module: run
        `python -m MODULE serve ...` instead of tunneld (tests/lab/evil_relay.py); relay_env: the
        relay's environment besides ours; relay_ipv6: the relay listens on IPv6 too."""
        self.lab = lab
        self.port = port
        self.relay_python = relay_python
        self.relay_module = relay_module
        self.relay_env = relay_env or {}
        self.relay = lab.public_host("relay", "relay", ipv6=relay_ipv6)
        self.relay_proc: subprocess.Popen | None = None
        self.nodes: dict[str, Host] = {}
        self.node_procs: dict[str, subprocess.Popen] = {}

    @property
    def relay_endpoint(self) -> str:
        return f"{self.relay.address}:{self.port}"

    @property
    def relay_endpoint6(self) -> str:
        return f"[{self.relay.address6}]:{self.port}"

    def start_relay(self, *extra: str, timeout: float = 20, wrap: tuple[str, ...] = (),
                    network6: str | None = NETWORK6) -> subprocess.Popen:
        """network6: the overlay's IPv6 prefix (None: the relay's own choice, a random ULA)."""
        listen = self.relay_endpoint + (f",{self.relay_endpoint6}" if self.relay.address6 else "")
        args = ("serve", "--listen", listen, "--state-dir", self.relay.state_dir, *extra)
        if network6 and not (self.relay_python or self.relay_module):  # older releases know no IPv6
            args += ("--network6", network6)
        if self.relay_module:
            self.relay_proc = self.lab.spawn(self.relay.ns, sys.executable, "-m", self.relay_module, *args,
                                             log=os.path.join(self.lab.tmp, "relay.log"),
                                             env={"PYTHONUNBUFFERED": "1", **self.relay_env})
        else:
            self.relay_proc = self.lab.tunneld(self.relay, *args, log_name="relay", wrap=wrap,
                                               python=self.relay_python, env=self.relay_env or None)
        proc = self.relay_proc

        def started():
            if proc.poll() is not None:
                raise LabError(f"tunneld serve exited with {proc.returncode}:\n{self.lab.log('relay')[-3000:]}")
            try:
                return self.status(self.relay)["role"] == "relay"
            except Exception:
                return False

        wait_for(started, timeout, what="the relay to start")
        return proc

    def stop_relay(self, sig: int = 15) -> None:
        if self.relay_proc is not None:
            self.lab.stop(self.relay_proc, sig)
            self.relay_proc = None

    def token(self, *extra: str) -> str:
        """A token from the relay; one for any number of nodes unless extra says --uses (a
        release before 0.3.0 knows no --uses: its tokens admit any number)."""
        command = [*tunneld_command(self.relay_python), "token", "--state-dir", self.relay.state_dir]
        if "--uses" not in extra:
            proc = self.lab.nsexec(self.relay.ns, *command, *extra, "--uses", "0", check=False)
            if proc.returncode == 0:
                return proc.stdout.decode().strip()
            if b"--uses" not in proc.stdout + proc.stderr:
                proc.check_returncode()
        return self.lab.nsexec(self.relay.ns, *command, *extra).stdout.decode().strip()

    def approve(self, name: str, prefix: str) -> subprocess.CompletedProcess:
        """`tunneld routes approve NAME PREFIX` on the relay."""
        return self.lab.nsexec(self.relay.ns, *tunneld_command(self.relay_python), "routes", "approve", name,
                               prefix, "--state-dir", self.relay.state_dir, check=False)

    def join(self, host: Host, name: str, token: str | None = None, *extra: str,
             wrap: tuple[str, ...] = (), python: str | None = None, env: dict | None = None,
             relay: str | None = None) -> subprocess.Popen:
        """relay: --relay's value [the relay's IPv4 address]."""
        # In a file, as the README says: a token in argv is readable by every local user.
        token_file = os.path.join(self.lab.tmp, f"{name}.token")
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write((token or self.token()) + "\n")
        proc = self.lab.tunneld(host, "join", "--relay", relay or self.relay_endpoint, "--token-file", token_file,
                                "--name", name, "--state-dir", host.state_dir, *extra, log_name=name, wrap=wrap,
                                python=python, env=env)
        self.nodes[name] = host
        self.node_procs[name] = proc
        return proc

    def stop_node(self, name: str, sig: int = 15) -> int | None:
        proc = self.node_procs.pop(name, None)
        return None if proc is None else self.lab.stop(proc, sig)

    def status(self, host: Host) -> dict:
        return request(os.path.join(host.state_dir, SOCKET_FILE), {"cmd": "status"}, timeout=3)

    def node_status(self, name: str) -> dict:
        return self.status(self.nodes[name])

    def wait_connected(self, names=None, timeout: float = 30) -> dict[str, dict]:
        """Until the relay and every node agree that all of names are connected."""
        names = list(names or self.nodes)

        def all_connected():
            relay_view = {n["name"]: n["connected"] for n in self.status(self.relay)["nodes"]}
            if not all(relay_view.get(n) for n in names):
                return None
            out = {}
            for n in names:
                proc = self.node_procs.get(n)
                if proc is not None and proc.poll() is not None:
                    raise LabError(f"tunneld join for {n} exited with {proc.returncode}:\n{self.lab.log(n)}")
                st = self.node_status(n)
                if not (st["relay"]["connected"] and st["ready"]
                        and len(st["peers"]) >= len(self.nodes) - 1 and all(p["online"] for p in st["peers"])):
                    return None
                out[n] = st
            # ... and the host routes each peer through tunneld0: the node installs the routes off its
            # receive path, a moment after its status says the peer is there
            for n, st in out.items():
                for p in st["peers"]:  # (a relay that lies may list the node itself as a peer: not routed)
                    if p["address"] != st["address"] and not self.routed(n, p["address"]):
                        return None
            return out

        return wait_for(all_connected, timeout, interval=0.2, what=f"{', '.join(names)} to connect")

    def routed(self, name: str, address: str) -> bool:
        """Does node name's host send address through its tunnel interface?"""
        got = self.lab.nsexec(self.nodes[name].ns, "ip", "-j", "route", "get", address, check=False)
        try:
            return json.loads(got.stdout or "[]")[0].get("dev") == self.node_status(name).get("interface", "tunneld0")
        except (ValueError, IndexError, KeyError):
            return False

    def address(self, name: str) -> str:
        return self.node_status(name)["address"]

    def ping(self, src: str, dst_address: str, count: int = 3, size: int | None = None,
             timeout: float = 20) -> subprocess.CompletedProcess:
        cmd = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2"]
        if size is not None:
            cmd += ["-s", str(size), "-M", "do"]
        return self.lab.nsexec(self.nodes[src].ns, *cmd, dst_address, check=False, timeout=timeout)


def standard(lab: Lab) -> Overlay:
    """The topology of the seeds: a relay; a public node; one behind NAT; one with no inbound."""
    ov = Overlay(lab)
    ov.start_relay()
    hosts = {
        "public": lab.public_host("public"),
        "natted": lab.nat_host("natted", "cone"),
        "hidden": lab.nat_host("hidden", "no-inbound"),
    }
    token = ov.token("--ttl", "1h")
    for name, host in hosts.items():
        ov.join(host, name, token)
    ov.wait_connected()
    return ov


# A sink that reports what it received: length and SHA-256 of the whole stream.
SINK = r"""
import hashlib, socket, sys
srv = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2]))); srv.listen(1); srv.settimeout(float(sys.argv[3]))
print("listening", flush=True)
conn, _ = srv.accept(); conn.settimeout(float(sys.argv[3]))
h = hashlib.sha256(); n = 0
while True:
    b = conn.recv(1 << 16)
    if not b: break
    h.update(b); n += len(b)
print(n, h.hexdigest(), flush=True)
"""

SOURCE = r"""
import os, socket, sys, hashlib, time
n = int(sys.argv[3]); seed = sys.argv[4].encode(); rate = float(sys.argv[6])
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[5]))
h = hashlib.sha256(); sent = 0; block = 0; start = time.monotonic()
while sent < n:
    chunk = hashlib.sha256(seed + block.to_bytes(8, "big")).digest() * 2048
    chunk = chunk[: n - sent]
    s.sendall(chunk); h.update(chunk); sent += len(chunk); block += 1
    if rate:  # paced: a stream that is still going when a test breaks something
        ahead = sent / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
s.shutdown(socket.SHUT_WR); s.recv(1); s.close()
print(sent, h.hexdigest(), flush=True)
"""


def transfer(ov: Overlay, src: str, dst: str, port: int, nbytes: int, timeout: float = 120,
             rate: float = 0) -> tuple[str, str]:
    """Send nbytes from node src to node dst's overlay address:port over TCP."""
    return transfer_between(ov.lab, ov.nodes[src].ns, ov.nodes[dst].ns, ov.address(dst), port, nbytes, timeout,
                            rate)


def transfer_between(lab: Lab, src_ns: str, dst_ns: str, dst_addr: str, port: int, nbytes: int,
                     timeout: float = 120, rate: float = 0) -> tuple[str, str]:
    """Send nbytes from namespace src_ns to dst_addr:port, served in dst_ns, over TCP, at up to
    `rate` bytes a second (0: as fast as it goes). Returns (sent, received) as "length sha256"
    each: equal when the stream arrived byte-exact."""
    sink = subprocess.Popen(["ip", "netns", "exec", dst_ns, sys.executable, "-c", SINK, dst_addr,
                             str(port), str(timeout)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lab.processes.append(sink)
    try:
        if sink.stdout.readline().strip() != b"listening":
            raise LabError(f"sink did not start: {sink.stderr.read().decode()}")
        sent = lab.nsexec(src_ns, sys.executable, "-c", SOURCE, dst_addr, str(port), str(nbytes),
                          hashlib.sha256(os.urandom(8)).hexdigest(), str(timeout), str(rate),
                          timeout=timeout + 10)
        out, err = sink.communicate(timeout=timeout)
        if sink.returncode != 0:
            raise LabError(f"sink failed: {err.decode()}")
        return sent.stdout.decode().strip(), out.decode().strip()
    finally:
        lab.stop(sink, timeout=2)
