"""Several relays of one network on a three-member etcd cluster, in a Lab (Debian's etcd).

    etcd1..3 192.0.2.21-23 ─┐
                            │ br-relay 192.0.2.254
    relay1..3 192.0.2.1-3 ──┘

Nodes join with --relay listing the relays, their home first; each relay and each etcd
member is a process of its own, stopped (or killed) by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

from tunneld.net.ctlsock import request
from tunneld.state import SOCKET_FILE
from . import Host, Lab, LabError, tunneld_command, wait_for

RELAY_PORT = 7000
ETCD = shutil.which("etcd") or "/usr/bin/etcd"

HEALTH = r"""
import json, sys, urllib.request
r = urllib.request.urlopen(urllib.request.Request(sys.argv[1] + "/v3/kv/range", data=b'{"key":"AA=="}'), timeout=2)
json.load(r)
"""

STATUS = r"""
import json, sys, urllib.request
r = urllib.request.urlopen(urllib.request.Request(sys.argv[1] + "/v3/maintenance/status", data=b"{}"), timeout=2)
s = json.load(r)
print(s["header"]["member_id"], s["leader"])
"""


class Etcd:
    def __init__(self, lab: Lab, members: int = 3):
        self.lab = lab
        self.hosts = [lab.public_host(f"etcd{i + 1}", "relay", address=f"192.0.2.{21 + i}") for i in range(members)]
        self.procs: dict[int, subprocess.Popen] = {}
        self.cluster = ",".join(f"e{i + 1}=http://{h.address}:2380" for i, h in enumerate(self.hosts))

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(f"{h.address}:2379" for h in self.hosts)

    def start(self, i: int, state: str = "new") -> None:
        h = self.hosts[i]
        self.procs[i] = self.lab.spawn(
            h.ns, ETCD, "--name", f"e{i + 1}", "--data-dir", os.path.join(h.state_dir, "etcd"),
            "--listen-client-urls", f"http://{h.address}:2379", "--advertise-client-urls", f"http://{h.address}:2379",
            "--listen-peer-urls", f"http://{h.address}:2380",
            "--initial-advertise-peer-urls", f"http://{h.address}:2380", "--initial-cluster", self.cluster,
            "--initial-cluster-state", state, "--initial-cluster-token", self.lab.tag,
            "--heartbeat-interval", "200", "--election-timeout", "2000",  # a busy 2-core VM
            log=os.path.join(self.lab.tmp, f"etcd{i + 1}.log"))

    def start_all(self) -> None:
        for i in range(len(self.hosts)):
            self.start(i)
        self.wait_healthy()

    def stop(self, i: int, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(i, None)
        if proc is not None:
            self.lab.stop(proc, sig)

    def healthy(self, i: int) -> bool:
        h = self.hosts[i]
        return self.lab.nsexec(h.ns, sys.executable, "-c", HEALTH, f"http://{h.address}:2379", check=False,
                               timeout=10).returncode == 0

    def leader(self) -> int:
        """The index of the member that leads the cluster now."""
        for i in sorted(self.procs):
            h = self.hosts[i]
            out = self.lab.nsexec(h.ns, sys.executable, "-c", STATUS, f"http://{h.address}:2379", check=False,
                                  timeout=10)
            if out.returncode == 0:
                member, leader = out.stdout.split()
                if member == leader:
                    return i
        raise LabError("no etcd member says it leads")

    def wait_healthy(self, timeout: float = 60) -> None:
        wait_for(lambda: all(self.healthy(i) for i in self.procs), timeout, interval=0.5, what="etcd to answer")


class Relays:
    def __init__(self, lab: Lab, etcd: Etcd, count: int = 3):
        self.lab = lab
        self.etcd = etcd
        self.hosts = [lab.public_host(f"relay{i + 1}", "relay", address=f"192.0.2.{1 + i}") for i in range(count)]
        self.procs: dict[int, subprocess.Popen] = {}
        self.nodes: dict[str, Host] = {}
        self.node_procs: dict[str, subprocess.Popen] = {}

    def endpoint(self, i: int) -> str:
        return f"{self.hosts[i].address}:{RELAY_PORT}"

    def add_relay(self) -> int:
        i = len(self.hosts)
        self.hosts.append(self.lab.public_host(f"relay{i + 1}", "relay", address=f"192.0.2.{1 + i}"))
        return i

    def start(self, i: int, *extra: str, copy_key: bool = True, timeout: float = 30) -> subprocess.Popen:
        h = self.hosts[i]
        first = self.hosts[0].state_dir
        if copy_key and i > 0 and not os.path.exists(os.path.join(h.state_dir, "private.key")):
            shutil.copy(os.path.join(first, "private.key"), os.path.join(h.state_dir, "private.key"))
            os.chmod(os.path.join(h.state_dir, "private.key"), 0o600)
        proc = self.procs[i] = self.lab.tunneld(h, "serve", "--listen", self.endpoint(i), "--store", self.etcd.url,
                                                "--state-dir", h.state_dir, *extra, log_name=f"relay{i + 1}")

        def started():
            if proc.poll() is not None:
                raise LabError(f"relay{i + 1} exited with {proc.returncode}:\n{self.lab.log(f'relay{i + 1}')[-3000:]}")
            try:
                return self.status(i)["role"] == "relay"
            except Exception:
                return False

        wait_for(started, timeout, what=f"relay{i + 1} to start")
        return proc

    def stop(self, i: int, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(i, None)
        if proc is not None:
            self.lab.stop(proc, sig)

    def status(self, i: int) -> dict:
        return self.control(i, {"cmd": "status"})

    def control(self, i: int, msg: dict) -> dict:
        return request(os.path.join(self.hosts[i].state_dir, SOCKET_FILE), msg, timeout=5)

    def cli(self, i: int, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.lab.nsexec(self.hosts[i].ns, *tunneld_command(), *args, "--state-dir", self.hosts[i].state_dir,
                               check=check)

    def token(self, i: int, *extra: str) -> str:
        return self.cli(i, "token", *extra).stdout.decode().strip()

    def join(self, host: Host, name: str, token: str, relays: list[int], *extra: str) -> subprocess.Popen:
        token_file = os.path.join(self.lab.tmp, f"{name}.token")
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
        proc = self.lab.tunneld(host, "join", "--relay", ",".join(self.endpoint(i) for i in relays),
                                "--token-file", token_file, "--name", name, "--state-dir", host.state_dir, *extra,
                                log_name=name)
        self.nodes[name] = host
        self.node_procs[name] = proc
        return proc

    def node_status(self, name: str) -> dict:
        return request(os.path.join(self.nodes[name].state_dir, SOCKET_FILE), {"cmd": "status"}, timeout=3)

    def wait_connected(self, names, timeout: float = 40) -> dict[str, dict]:
        """Until every one of names is connected to a relay and sees the others online."""
        names = list(names)

        def ready():
            out = {}
            for n in names:
                proc = self.node_procs.get(n)
                if proc is not None and proc.poll() is not None:
                    raise LabError(f"tunneld join for {n} exited with {proc.returncode}:\n{self.lab.log(n)}")
                try:
                    st = self.node_status(n)
                except Exception:
                    return None
                online = {p["name"] for p in st["peers"] if p["online"]}
                if not (st["relay"]["connected"] and st["ready"] and set(names) - {n} <= online):
                    return None
                out[n] = st
            return out

        return wait_for(ready, timeout, interval=0.2, what=f"{', '.join(names)} to connect")

    def home(self, name: str) -> str:
        return self.node_status(name)["relay"]["endpoint"]

    def ping(self, src: str, dst_address: str, count: int = 3) -> subprocess.CompletedProcess:
        return self.lab.nsexec(self.nodes[src].ns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2",
                               dst_address, check=False, timeout=30)


def dump(r: Relays) -> str:
    """What a failing test prints: every relay's view."""
    out = []
    for i in list(r.procs):
        try:
            st = r.status(i)
            out.append(json.dumps({"relay": i + 1, "relays": st["relays"],
                                   "nodes": [(n["name"], n["connected"], n["home"]) for n in st["nodes"]],
                                   "drops": st["drops"]}))
        except Exception as exc:
            out.append(f"relay{i + 1}: {exc}")
    return "\n".join(out)
