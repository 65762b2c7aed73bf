"""Who may join, under which name and address: against SQLite and its in-memory twin alike."""

import ipaddress
import os
import sqlite3

import pytest

from tunneld.control.registry import Refusal, Registry, allocate, valid_name
from tunneld.store.base import StoreError
from tunneld.store.memory import MemoryStore
from tunneld.store.sqlite import SqliteStore

NET = ipaddress.IPv4Network("100.64.0.0/10")
NOW = 1_700_000_000.0


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    s = MemoryStore() if request.param == "memory" else SqliteStore(str(tmp_path / "relay.db"))
    yield s
    s.close()


def key(i):
    return bytes([i]) * 32


def test_first_join_needs_a_valid_token(store):
    reg = Registry(store, NET)
    token = reg.issue_token(key(0), 3600, NOW)
    assert reg.join(key(1), "alpha", None, NOW).code == "unknown_key"
    assert reg.join(key(1), "alpha", token.token_id + bytes(16), NOW).code == "bad_token"
    assert reg.join(key(1), "alpha", bytes(8) + token.secret, NOW).code == "bad_token"
    rec = reg.join(key(1), "alpha", token.credential, NOW)
    assert (rec.name, rec.address, rec.public_key) == ("alpha", "100.64.0.1", key(1))
    assert store.token(token.token_id).uses == 1


def test_same_key_same_address_forever(store):
    reg = Registry(store, NET)
    token = reg.issue_token(key(0), 60, NOW)
    a = reg.join(key(1), "alpha", token.credential, NOW)
    b = reg.join(key(2), "bravo", token.credential, NOW)
    assert (a.address, b.address) == ("100.64.0.1", "100.64.0.2")
    later = NOW + 86400  # the token expired long ago: the key is what counts now
    assert reg.join(key(1), "alpha", token.credential, later).address == a.address
    assert reg.join(key(1), "alpha", None, later).address == a.address
    assert reg.join(key(2), "renamed", None, later).name == "bravo"


def test_expired_and_revoked_tokens(store):
    reg = Registry(store, NET)
    short = reg.issue_token(key(0), 10, NOW)
    assert reg.join(key(1), "alpha", short.credential, NOW + 11).code == "token_expired"
    forever = reg.issue_token(key(0), None, NOW)
    assert store.revoke_token(forever.token_id)
    assert not store.revoke_token(forever.token_id)
    assert reg.join(key(1), "alpha", forever.credential, NOW).code == "token_revoked"


def test_name_taken_until_revoked_then_address_passes_on(store):
    reg = Registry(store, NET)
    token = reg.issue_token(key(0), None, NOW)
    old = reg.join(key(1), "alpha", token.credential, NOW)
    refusal = reg.join(key(2), "alpha", token.credential, NOW)
    assert refusal.code == "name_taken" and "tunneld revoke alpha" in refusal.message
    assert store.revoke_node("alpha", NOW)
    assert reg.join(key(1), "alpha", token.credential, NOW).code == "key_revoked"
    new = reg.join(key(2), "alpha", token.credential, NOW)
    assert new.address == old.address and new.public_key == key(2)


def test_bad_names(store):
    reg = Registry(store, NET)
    token = reg.issue_token(key(0), None, NOW)
    for name in ("", "UPPER", "-lead", "trail-", "a..b", "x" * 254, "sp ace"):
        assert reg.join(key(1), name, token.credential, NOW).code == "bad_name", name
    assert valid_name("node-1.example.com")


def test_network_full(store):
    reg = Registry(store, ipaddress.IPv4Network("100.64.0.0/30"))
    token = reg.issue_token(key(0), None, NOW)
    assert reg.join(key(1), "a", token.credential, NOW).address == "100.64.0.1"
    assert reg.join(key(2), "b", token.credential, NOW).address == "100.64.0.2"
    full = reg.join(key(3), "c", token.credential, NOW)
    assert isinstance(full, Refusal) and full.code == "network_full" and full.retry


def test_allocate_fills_gaps():
    net = ipaddress.IPv4Network("100.64.0.0/29")
    assert allocate(net, set()) == "100.64.0.1"
    assert allocate(net, {"100.64.0.1", "100.64.0.3"}) == "100.64.0.2"
    assert allocate(net, {f"100.64.0.{i}" for i in range(1, 7)}) is None


def test_sqlite_survives_reopen(tmp_path):
    path = str(tmp_path / "relay.db")
    s = SqliteStore(path)
    reg = Registry(s, NET)
    token = reg.issue_token(key(0), None, NOW)
    rec = reg.join(key(1), "alpha", token.credential, NOW)
    s.close()
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    s2 = SqliteStore(path)
    assert s2.node_by_key(key(1)) == rec
    assert s2.token(token.token_id).uses == 1
    s2.close()


def test_sqlite_refuses_a_corrupt_file_and_leaves_it_alone(tmp_path):
    path = tmp_path / "relay.db"
    garbage = b"this is not a database" * 100
    path.write_bytes(garbage)
    with pytest.raises(StoreError, match="unreadable"):
        SqliteStore(str(path))
    assert path.read_bytes() == garbage


def test_sqlite_refuses_a_newer_schema(tmp_path):
    path = tmp_path / "relay.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(StoreError, match="newer tunneld"):
        SqliteStore(str(path))


def test_last_seen_is_written_in_one_batch(store):
    reg = Registry(store, NET)
    token = reg.issue_token(key(0), None, NOW)
    reg.join(key(1), "alpha", token.credential, NOW)
    reg.join(key(2), "bravo", token.credential, NOW)
    store.touch({"alpha": NOW + 5, "bravo": NOW + 6, "ghost": NOW})
    assert store.node_by_name("alpha").last_seen == NOW + 5
    assert store.node_by_name("bravo").last_seen == NOW + 6


def test_a_version_1_database_is_migrated_in_place(tmp_path):
    path = tmp_path / "relay.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE nodes (name TEXT PRIMARY KEY, address TEXT NOT NULL UNIQUE, public_key BLOB UNIQUE,
                            created REAL NOT NULL, last_seen REAL);
        INSERT INTO nodes VALUES ('alpha', '100.64.0.1', x'0101010101010101010101010101010101010101010101010101010101010101', 1, NULL);
        PRAGMA user_version = 1;
    """)
    db.close()
    s = SqliteStore(str(path))
    rec = s.node_by_name("alpha")
    assert rec.address == "100.64.0.1" and rec.mtu is None
    s.set_mtu("alpha", 1450)
    s.close()
    s = SqliteStore(str(path))
    assert s.node_by_key(key(1)).mtu == 1450
    s.close()
