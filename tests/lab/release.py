"""An earlier release of tunneld, from this repository's own history, in a venv of its own.

    python = release_python("v0.1.0")   # .venv/releases/v0.1.0/bin/python
    lab.tunneld(host, "join", ..., python=python)

The release's files come from `git archive TAG`; they are installed, without their
dependencies, into a venv that sees the checkout's .venv for those (the same pinned
cryptography, msgpack, pyroute2 ...: nothing is downloaded). The venv is kept and reused
while the tag points at the same commit. previous_release() names the release a change
must keep working with: the newest tag older than the version being built.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from . import LabError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(ROOT, ".venv", "releases")


class ReleaseError(LabError):
    pass


def _git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ReleaseError(f"git {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def current_version() -> str:
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        return re.search(r'^version = "([^"]+)"', f.read(), re.M).group(1)


def previous_release() -> str:
    """The newest release tag (vX.Y.Z) older than the version in pyproject.toml. A clone made
    without tags or history gets them from its origin first."""
    here = _version(current_version())
    for attempt in range(2):
        tags = [t for t in _git("tag", "--list", "v[0-9]*").split() if _version(t) < here]
        if tags:
            return max(tags, key=_version)
        if attempt == 0:
            shallow = _git("rev-parse", "--is-shallow-repository") == "true"
            subprocess.run(["git", "-C", ROOT, "fetch", "--quiet", "--tags", *(["--unshallow"] if shallow else []),
                            "origin"], capture_output=True, timeout=120)
    raise ReleaseError(f"no release tag older than {current_version()} in {ROOT}, nor at its origin; "
                       "fetch the tags (git fetch --tags)")


def release_python(tag: str) -> str:
    """A python that runs release `tag` as `python -I -m tunneld` (-I: the checkout's own
    tunneld/ in the current directory must not shadow it)."""
    commit = _git("rev-parse", f"{tag}^{{commit}}")
    venv = os.path.join(CACHE, tag)
    python = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, ".commit")
    if os.path.exists(stamp) and open(stamp).read() == commit:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    # The checkout's packages (not its tunneld: .pth files in an added directory are not read,
    # so its editable install stays out) for the release's dependencies.
    site = sysconfig.get_path("purelib", vars={"base": venv, "platbase": venv})
    with open(os.path.join(site, "tunneld-deps.pth"), "w") as f:
        f.write(sysconfig.get_path("purelib") + "\n")
    with tempfile.TemporaryDirectory() as src:
        archive = subprocess.run(["git", "-C", ROOT, "archive", "--format=tar", commit], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", src], input=archive, check=True)
        proc = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                               "--disable-pip-version-check", src], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ReleaseError(f"cannot install {tag}: {proc.stderr.strip()[-500:]}")
    check = subprocess.run([python, "-I", "-c", "import tunneld, sys; print(tunneld.__version__, tunneld.__file__)"],
                           capture_output=True, text=True, cwd=ROOT)
    version, _, where = check.stdout.strip().partition(" ")
    if check.returncode != 0 or version != tag.lstrip("v") or not where.startswith(venv + "/"):
        raise ReleaseError(f"the venv for {tag} does not run {tag}: {check.stdout.strip()} {check.stderr.strip()}")
    with open(stamp, "w") as f:
        f.write(commit)
    return python
