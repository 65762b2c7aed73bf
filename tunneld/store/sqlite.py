"""Store in an embedded SQLite file (WAL mode: a crash loses no committed registration).

`tunneld token` and `tunneld serve` open the same file from two processes;
SQLite's locking and a busy timeout serialise them.
"""

from __future__ import annotations

import os
import sqlite3

from .base import Conflict, NodeRecord, StoreError, TokenRecord

SCHEMA_VERSION = 2  # 2: nodes.mtu
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    address TEXT NOT NULL UNIQUE,
    public_key BLOB UNIQUE,
    created REAL NOT NULL,
    last_seen REAL,
    mtu INTEGER
);
CREATE TABLE IF NOT EXISTS revoked_keys (
    public_key BLOB PRIMARY KEY, name TEXT NOT NULL, revoked_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    token_id BLOB PRIMARY KEY,
    secret_hash BLOB NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    revoked INTEGER NOT NULL DEFAULT 0,
    uses INTEGER NOT NULL DEFAULT 0
);
"""


def _node(row) -> NodeRecord | None:
    return None if row is None else NodeRecord(*row)


def _token(row) -> TokenRecord | None:
    return None if row is None else TokenRecord(row[0], row[1], row[2], row[3], bool(row[4]), row[5])


class SqliteStore:
    def __init__(self, path: str):
        self.path = path
        fresh = not os.path.exists(path)
        try:
            self._db = sqlite3.connect(path, timeout=10.0, isolation_level=None)
            self._db.execute("PRAGMA busy_timeout = 10000")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{path} was written by a newer tunneld (schema {version}); upgrade tunneld")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.executescript(_SCHEMA)
            if 0 < version < 2:
                self._db.execute("ALTER TABLE nodes ADD COLUMN mtu INTEGER")
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            # Touch every table so that a damaged file fails here, not mid-join.
            self._db.execute("SELECT count(*) FROM nodes").fetchone()
            self._db.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"state database {path} is unreadable ({exc}); restore it from a backup, "
                "or move it away to start with no nodes"
            ) from None
        if fresh:
            os.chmod(path, 0o600)

    def _one(self, sql, *args):
        return self._db.execute(sql, args).fetchone()

    def get_meta(self, key):
        row = self._one("SELECT value FROM meta WHERE key = ?", key)
        return row[0] if row else None

    def set_meta(self, key, value):
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def node_by_key(self, key):
        return _node(self._one("SELECT name, address, public_key, created, last_seen, mtu FROM nodes "
                               "WHERE public_key = ?", key))

    def node_by_name(self, name):
        return _node(self._one("SELECT name, address, public_key, created, last_seen, mtu FROM nodes "
                               "WHERE name = ?", name))

    def nodes(self):
        rows = self._db.execute("SELECT name, address, public_key, created, last_seen, mtu FROM nodes "
                                "ORDER BY name").fetchall()
        return [_node(r) for r in rows]

    def register(self, name, key, allocate, now):
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT public_key FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is not None:
                if row[0] is not None:
                    raise Conflict(f"name {name!r} is taken")
                db.execute("UPDATE nodes SET public_key = ? WHERE name = ?", (key, name))
            else:
                used = {r[0] for r in db.execute("SELECT address FROM nodes")}
                address = allocate(used)
                if address is None:
                    db.execute("ROLLBACK")
                    return None
                db.execute("INSERT INTO nodes (name, address, public_key, created) VALUES (?, ?, ?, ?)",
                           (name, address, key, now))
            db.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            db.execute("ROLLBACK")
            raise Conflict(str(exc)) from None
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return self.node_by_name(name)

    def set_mtu(self, name, mtu):
        self._db.execute("UPDATE nodes SET mtu = ? WHERE name = ?", (mtu, name))

    def touch(self, seen):
        with self._db:  # one transaction, one fsync, for all of them
            self._db.execute("BEGIN")
            self._db.executemany("UPDATE nodes SET last_seen = ? WHERE name = ?",
                                 [(when, name) for name, when in seen.items()])

    def revoke_node(self, name, now):
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT public_key FROM nodes WHERE name = ?", (name,)).fetchone()
            if row is None or row[0] is None:
                db.execute("ROLLBACK")
                return False
            db.execute("INSERT OR REPLACE INTO revoked_keys VALUES (?, ?, ?)", (row[0], name, now))
            db.execute("UPDATE nodes SET public_key = NULL WHERE name = ?", (name,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return True

    def key_revoked(self, key):
        return self._one("SELECT 1 FROM revoked_keys WHERE public_key = ?", key) is not None

    def add_token(self, token):
        self._db.execute("INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?)",
                         (token.token_id, token.secret_hash, token.created, token.expires,
                          int(token.revoked), token.uses))

    def token(self, token_id):
        return _token(self._one("SELECT token_id, secret_hash, created, expires, revoked, uses "
                                "FROM tokens WHERE token_id = ?", token_id))

    def tokens(self):
        rows = self._db.execute("SELECT token_id, secret_hash, created, expires, revoked, uses "
                                "FROM tokens ORDER BY created").fetchall()
        return [_token(r) for r in rows]

    def revoke_token(self, token_id):
        cur = self._db.execute("UPDATE tokens SET revoked = 1 WHERE token_id = ? AND revoked = 0",
                               (token_id,))
        return cur.rowcount == 1

    def use_token(self, token_id):
        self._db.execute("UPDATE tokens SET uses = uses + 1 WHERE token_id = ?", (token_id,))

    def close(self):
        self._db.close()
