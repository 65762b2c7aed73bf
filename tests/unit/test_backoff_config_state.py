"""Reconnect backoff, settings parsing, state files."""

import ipaddress
import os

import pytest

from tunneld.config import load_file, merged, parse_duration, parse_hostport, parse_network
from tunneld.control.backoff import Backoff
from tunneld.errors import ConfigError
from tunneld.state import load_identity, prepare_dir


def test_backoff_grows_is_capped_and_jittered():
    low = Backoff(base=0.5, cap=8.0, rng=lambda: 0.0)
    high = Backoff(base=0.5, cap=8.0, rng=lambda: 1.0)
    assert [high.next() for _ in range(7)] == [0.5, 1, 2, 4, 8, 8, 8]
    assert [low.next() for _ in range(3)] == [0.25, 0.5, 1.0]
    high.reset()
    assert high.next() == 0.5
    for _ in range(10_000):  # never overflows, never exceeds the cap
        assert high.next() <= 8.0


@pytest.mark.parametrize("text,expected", [
    ("192.0.2.1:7000", ("192.0.2.1", 7000)), ("relay.example:443", ("relay.example", 443)),
    ("[2001:db8::1]:7000", ("2001:db8::1", 7000)),
])
def test_hostport(text, expected):
    assert parse_hostport(text, "--relay") == expected


@pytest.mark.parametrize("text", ["", "192.0.2.1", "192.0.2.1:0", "192.0.2.1:70000", "a:b:c", "x y:1"])
def test_bad_hostport(text):
    with pytest.raises(ConfigError, match="--relay"):
        parse_hostport(text, "--relay")


def test_duration():
    assert parse_duration("90") == 90 and parse_duration("30m") == 1800
    assert parse_duration("24h") == 86400 and parse_duration("7d") == 7 * 86400
    assert parse_duration("0") is None
    for bad in ("", "-1h", "1w", "soon"):
        with pytest.raises(ConfigError, match="--ttl"):
            parse_duration(bad)


def test_network():
    assert parse_network("100.64.0.0/10") == ipaddress.IPv4Network("100.64.0.0/10")
    for bad in ("100.64.0.1/10", "100.64.0.0/31", "fd00::/8", "nope"):
        with pytest.raises(ConfigError, match="--network"):
            parse_network(bad)


def test_config_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('relay = "192.0.2.1:7000"\nstate-dir = "/x"\n')
    s = merged({"relay": None, "state_dir": "/cli"}, str(f), {"relay": None, "state_dir": "/d", "name": None})
    assert s == {"relay": "192.0.2.1:7000", "state_dir": "/cli", "name": None}
    f.write_text('relya = "typo"\n')
    with pytest.raises(ConfigError, match="unknown setting 'relya'"):
        load_file(str(f), {"relay"})
    f.write_text('relay = \n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_file(str(f), {"relay"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_file(str(tmp_path / "missing.toml"), {"relay"})


def test_identity_is_made_once_with_mode_0600(tmp_path):
    d = prepare_dir(str(tmp_path / "state"))
    assert oct(os.stat(d).st_mode & 0o777) == "0o700"
    first = load_identity(d)
    assert oct(os.stat(os.path.join(d, "private.key")).st_mode & 0o777) == "0o600"
    assert load_identity(d).public == first.public


def test_identity_refuses_loose_permissions_and_damage(tmp_path):
    d = prepare_dir(str(tmp_path))
    load_identity(d)
    path = os.path.join(d, "private.key")
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_identity(d)
    os.chmod(path, 0o600)
    with open(path, "w") as f:
        f.write("not base64 at all!\n")
    with pytest.raises(ConfigError, match="cannot read the key"):
        load_identity(d)
    with open(path) as f:
        assert f.read() == "not base64 at all!\n"  # left for the operator to restore


def test_state_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="state dir"):
        prepare_dir(str(f))


def test_a_state_dir_open_to_others_is_closed(tmp_path):
    path = tmp_path / "state"
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    prepare_dir(str(path))
    assert os.stat(path).st_mode & 0o777 == 0o700


def test_the_relay_database_and_its_wal_files_are_0600(tmp_path):
    """SQLite makes relay.db-wal and -shm with the database's mode: none may be 0644."""
    import asyncio
    from tunneld.store.base import TokenRecord
    from tunneld.store.sqlite import SqliteStore
    state = prepare_dir(str(tmp_path / "relay"))
    path = os.path.join(state, "relay.db")

    async def main():
        store = SqliteStore(path)
        await store.add_token(TokenRecord(bytes(8), bytes(32), 0.0, None))
        modes = {n: os.stat(os.path.join(state, n)).st_mode & 0o777 for n in os.listdir(state)}
        await store.close()
        return modes

    umask = os.umask(0o022)  # what a shell gives a daemon started by hand
    try:
        modes = asyncio.run(main())
    finally:
        os.umask(umask)
    assert {"relay.db", "relay.db-wal", "relay.db-shm"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes
