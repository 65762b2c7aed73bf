"""Integration fixtures: real namespaces, real TUN, real NAT, real daemons; torn down always."""

import os

import pytest

from tests.lab import Lab
from tests.lab.overlay import standard


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.netns)


@pytest.fixture(scope="session", autouse=True)
def _need_root():
    if os.geteuid() != 0:
        pytest.fail("the integration tests build network namespaces and TUN devices: run them as root "
                    "(sudo bin/test)", pytrace=False)


def _dump_logs(lab, request):
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for name in sorted(os.listdir(lab.tmp)):
            if name.endswith(".log"):
                print(f"--- {name} ---\n{lab.log(name[:-4])[-4000:]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture
def lab(request):
    lab = Lab()
    try:
        yield lab
    finally:
        _dump_logs(lab, request)
        lab.close()


@pytest.fixture(scope="module")
def overlay():
    """The seeds' topology, shared by a module's non-destructive tests."""
    lab = Lab()
    try:
        yield standard(lab)
    finally:
        lab.close()


SHARED_TOPOLOGIES = ("overlay", "cluster", "paths_lab", "pub")  # module-scoped fixtures whose logs a failing test shows


@pytest.fixture(autouse=True)
def _shared_logs_on_failure(request):
    yield
    for name in SHARED_TOPOLOGIES:
        if name in request.fixturenames:
            _dump_logs(request.getfixturevalue(name).lab, request)
