"""An earlier release of tunneld in a venv of its own.

    python = release_python(previous_release())   # .venv/releases/0.1.0/bin/python
    lab.tunneld(host, "join", ..., python=python)

Releases a change must keep working with are kept as the wheels operators installed, in
tests/releases/ (a clone, however it was made, has them: tags and history may not travel with
it). previous_release() names the newest one older than the version being built. The bench's
--compare also takes any git revision, whose files come from `git archive REV`.

Either is installed without its dependencies into a venv that sees the checkout's .venv for
those (the same pinned cryptography, msgpack, pyroute2 ...: nothing is downloaded), and the
venv is kept while its source is unchanged.
"""

from __future__ import annotations

import hashlib
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
WHEELS = os.path.join(ROOT, "tests", "releases")


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
    """The wheel of the newest release older than the version in pyproject.toml."""
    here = _version(current_version())
    wheels = [os.path.join(WHEELS, n) for n in os.listdir(WHEELS) if re.fullmatch(r"tunneld-[\d.]+-[\w.]+-[\w.]+-[\w.]+\.whl", n)]
    older = [w for w in wheels if _version(os.path.basename(w)) < here]
    if not older:
        raise ReleaseError(f"no release older than {current_version()} in {WHEELS}")
    return max(older, key=lambda w: _version(os.path.basename(w)))


def release_python(release: str) -> str:
    """A python that runs `release` (a wheel file, or a git revision such as v0.1.0) as
    `python -I -m tunneld` (-I: the checkout's own tunneld/ in the current directory must not
    shadow it)."""
    if release.endswith(".whl"):
        with open(release, "rb") as f:
            source = "sha256:" + hashlib.sha256(f.read()).hexdigest()
        name = expected = os.path.basename(release).split("-")[1]
    else:
        source = _git("rev-parse", f"{release}^{{commit}}")
        name, expected = release, (release.lstrip("v") if re.fullmatch(r"v\d+\.\d+\.\d+", release) else None)
    venv = os.path.join(CACHE, name)
    python = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, ".source")
    if os.path.exists(stamp) and open(stamp).read() == source:
        return python
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    # The checkout's packages (not its tunneld: .pth files in an added directory are not read,
    # so its editable install stays out) for the release's dependencies.
    site = sysconfig.get_path("purelib", vars={"base": venv, "platbase": venv})
    with open(os.path.join(site, "tunneld-deps.pth"), "w") as f:
        f.write(sysconfig.get_path("purelib") + "\n")
    with tempfile.TemporaryDirectory() as src:
        if release.endswith(".whl"):
            target = release
        else:
            archive = subprocess.run(["git", "-C", ROOT, "archive", "--format=tar", source], capture_output=True,
                                     check=True).stdout
            subprocess.run(["tar", "-x", "-C", src], input=archive, check=True)
            target = src
        proc = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                               "--disable-pip-version-check", target], capture_output=True, text=True)
        if proc.returncode != 0:
            raise ReleaseError(f"cannot install {release}: {proc.stderr.strip()[-500:]}")
    check = subprocess.run([python, "-I", "-c", "import tunneld, sys; print(tunneld.__version__, tunneld.__file__)"],
                           capture_output=True, text=True, cwd=ROOT)
    version, _, where = check.stdout.strip().partition(" ")
    if check.returncode != 0 or (expected and version != expected) or not where.startswith(venv + "/"):
        raise ReleaseError(f"the venv for {release} does not run it: {check.stdout.strip()} {check.stderr.strip()}")
    with open(stamp, "w") as f:
        f.write(source)
    return python
