"""The express path (tunneld/net/_express.c): lone packets and GRO trains from read to write
in C, everything else handed to the Python path as it was read. Each case runs in a network
namespace of its own on real UDP sockets and the real engines (tests/lab/express_cases.py
says how), and checks what a user would: the bytes tunneld0 gets, what leaves, what is
dropped and counted, what the engine still sees."""

import os
import sys

import pytest

from tests.lab import Lab
from tests.lab import express_cases

SCRIPT = os.path.abspath(express_cases.__file__)


@pytest.fixture(scope="module")
def namespace():
    lab = Lab()
    try:
        yield lab, lab.add_namespace("express")
    finally:
        lab.close()


@pytest.mark.parametrize("case", sorted(express_cases.CASES))
def test_express_path(namespace, case):
    lab, ns = namespace
    out = lab.nsexec(ns, sys.executable, SCRIPT, case, check=False, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == b"ok", (out.stdout + out.stderr).decode()[-4000:]
