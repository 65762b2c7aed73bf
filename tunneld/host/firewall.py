"""nftables, for a node's policy (policy.py writes the table, this applies and reads it)
and the gateway's NAT (nat.py). Every change is one `nft -f` file, applied whole or not at
all; tunneld touches only tables of its own."""

from __future__ import annotations

import json
import shutil
import subprocess

from ..errors import ConfigError, HostError
from ..policy import TABLE, ruleset

TIMEOUT = 10  # seconds: nft answers in milliseconds; a hung one must not hang the node


def check_available() -> None:
    if shutil.which("nft") is None:
        raise ConfigError("a policy is enforced with nftables, and 'nft' is not installed: install nftables")


def nft(text: str, what: str) -> None:
    """Apply an nft file; HostError naming what it was for and nft's own last line if refused."""
    try:
        proc = subprocess.run(["nft", "-f", "-"], input=text.encode(), capture_output=True, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HostError(f"cannot run nft for {what}: {exc}") from None
    if proc.returncode != 0:
        said = proc.stderr.decode(errors="replace").strip().splitlines()
        raise HostError(f"nft refused {what}: {said[0] if said else f'exit {proc.returncode}'}")


def enforce(policy, peers: dict, ifname: str) -> None:
    """tunneld0 admits what policy allows (policy None: everything, the table gone)."""
    if policy is None and shutil.which("nft") is None:
        return  # no nftables, so no table left from an earlier run either
    nft(ruleset(policy, peers, ifname), "the policy" if policy is not None else "removing the policy")


def listing() -> dict:
    """The policy table with its counters, as nft's JSON; {} if it cannot be read."""
    return read("list", "table", "inet", TABLE)


def read(*command: str) -> dict:
    """What `nft -j COMMAND` says, as JSON; {} if it cannot be read (no nft, no such table)."""
    try:
        proc = subprocess.run(["nft", "-j", *command], capture_output=True, timeout=TIMEOUT)
        return json.loads(proc.stdout) if proc.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}
