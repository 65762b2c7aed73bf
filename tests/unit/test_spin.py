"""The busy-poll after data: it reads what arrives within its window without the loop's
wake-up, it is bounded, and it never runs without data."""

import asyncio
import socket
import time

import pytest

from tunneld.errors import ConfigError
from tunneld.net.spin import Spinner, window_from_env


def run_once(loop):
    loop.run_until_complete(asyncio.sleep(0))


def test_input_within_the_window_is_read_by_the_spin():
    loop = asyncio.new_event_loop()
    a, b = socket.socketpair()
    try:
        got = []
        spinner = Spinner(loop, {a.fileno(): lambda: got.append(a.recv(100))}, 0.5)
        spinner.kick(time.monotonic())
        b.send(b"answer")  # comes back while the spin polls: no reader was ever registered
        run_once(loop)
        assert got == [b"answer"] and spinner.spins == 1
        spinner.close()
    finally:
        a.close()
        b.close()
        loop.close()


def test_without_data_or_with_the_window_off_nothing_spins():
    loop = asyncio.new_event_loop()
    a, b = socket.socketpair()
    try:
        got = []
        idle = Spinner(loop, {a.fileno(): lambda: got.append(a.recv(100))}, 0.5)
        off = Spinner(loop, {a.fileno(): lambda: got.append(a.recv(100))}, 0.0)
        off.kick(time.monotonic())
        assert off.pending is None
        b.send(b"x")
        run_once(loop)
        assert got == [] and idle.spins == 0 and off.spins == 0
    finally:
        a.close()
        b.close()
        loop.close()


def test_the_spin_ends_when_its_window_does():

    loop = asyncio.new_event_loop()
    a, b = socket.socketpair()
    try:
        spinner = Spinner(loop, {a.fileno(): lambda: a.recv(100)}, 0.02)
        spinner.kick(time.monotonic())
        t0 = time.monotonic()
        run_once(loop)
        assert time.monotonic() - t0 < 1.0 and spinner.spins == 0
    finally:
        a.close()
        b.close()
        loop.close()


@pytest.mark.parametrize("value", ["-1", "fast", "100001"])
def test_a_bad_window_is_refused(monkeypatch, value):
    monkeypatch.setenv("TUNNELD_BUSY_POLL_US", value)
    with pytest.raises(ConfigError, match="TUNNELD_BUSY_POLL_US"):
        window_from_env()


def test_the_window_defaults_and_can_be_turned_off(monkeypatch):
    monkeypatch.delenv("TUNNELD_BUSY_POLL_US", raising=False)
    assert window_from_env() == 0.0015
    monkeypatch.setenv("TUNNELD_BUSY_POLL_US", "0")
    assert window_from_env() == 0.0
