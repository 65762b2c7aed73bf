"""The shape of the package, held against the code: pure cores stay pure, engine modules stay
readable, and the wheel carries only what a node or relay runs."""

import ast
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = os.path.join(ROOT, "tunneld")
# What an engine or the pure core may not touch: sockets, event loops, processes, stores, clocks
# and randomness come in from the daemons (engine/effects.py's Env), never from an import.
IMPURE = {"sqlite3", "subprocess", "socket", "asyncio", "secrets", "time", "random", "os", "uvloop", "pyroute2",
          "select", "threading", "concurrent"}
PURE_PACKAGES = ("engine", "proto", "control")
MAX_ENGINE_LINES = 400


def modules(package: str):
    folder = os.path.join(PACKAGE, package)
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".py"))


def imports(path: str) -> set[str]:
    tree = ast.parse(open(path).read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", PURE_PACKAGES)
def test_the_pure_core_imports_no_io_clock_or_randomness(package):
    found = {os.path.relpath(p, ROOT): sorted(imports(p) & IMPURE) for p in modules(package)}
    assert {path: bad for path, bad in found.items() if bad} == {}


def test_no_engine_module_is_longer_than_one_sitting():
    lengths = {os.path.basename(p): sum(1 for _ in open(p)) for p in modules("engine")}
    assert max(lengths.values()) <= MAX_ENGINE_LINES, lengths


def test_every_engine_module_says_what_it_does():
    for path in modules("engine"):
        doc = ast.get_docstring(ast.parse(open(path).read()))
        assert doc and len(doc.splitlines()) >= 2, path


def test_the_wheel_holds_the_daemon_and_not_the_lab(tmp_path):
    # From a copy of the tree as git sees it: a build/ left in the checkout must not decide.
    files = subprocess.run(["git", "-C", ROOT, "ls-files", "-co", "--exclude-standard"], capture_output=True,
                           text=True, check=True).stdout.split()
    src = tmp_path / "src"
    for name in files:
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(src / os.path.dirname(name), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), src / name)
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("tunneld-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tunneld/engine/node.py" in names and "tunneld/net/noded.py" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/")) or "/lab/" in n]
