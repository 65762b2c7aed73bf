"""Store in an embedded SQLite file (WAL, synchronous=FULL: a crash loses no committed
registration). Every statement runs on one thread of the store's own, never on the
event loop; each method is one transaction.

Only one process writes it while a relay runs: `tunneld token` and `tunneld revoke`
go through the running relay's control socket, and open the file themselves only
when no relay runs.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor

from .base import Conflict, NodeRecord, Snapshot, StoreError, TokenRecord

SCHEMA_VERSION = 3  # 2: nodes.mtu; 3: nodes.lock, tokens.max_uses, approved_routes
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    address TEXT NOT NULL UNIQUE,
    public_key BLOB UNIQUE,
    created REAL NOT NULL,
    last_seen REAL,
    mtu INTEGER,
    lock BLOB
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
    uses INTEGER NOT NULL DEFAULT 0,
    max_uses INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS approved_routes (
    name TEXT NOT NULL, prefix TEXT NOT NULL, PRIMARY KEY (name, prefix)
);
"""
_NODE_COLUMNS = "name, address, public_key, created, last_seen, mtu, lock"
_TOKEN_COLUMNS = "token_id, secret_hash, created, expires, revoked, uses, max_uses"


def _token(row) -> TokenRecord:
    return TokenRecord(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6])


def _routes(rows) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for name, prefix in rows:
        out[name] = out.get(name, ()) + (prefix,)
    return out


class SqliteStore:
    shared = False  # one relay's own
    batch_limit = 64  # registrations in one transaction at most
    def __init__(self, path: str):
        """Opens (creating, or migrating, as needed) the file; StoreError if it is damaged or
        newer than this tunneld. Blocking: call it before serving, or from a thread."""
        self.path = path
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="sqlite")
        try:
            self._db = self._thread.submit(self._open).result()
        except BaseException:
            self._thread.shutdown()
            raise

    def _open(self) -> sqlite3.Connection:
        path = self.path
        db = None
        try:
            # Created 0600 before SQLite opens it: SQLite gives the -wal and -shm files it
            # makes beside it the database file's mode, and they hold the same secrets.
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            db = sqlite3.connect(path, timeout=10.0, isolation_level=None)
            db.execute("PRAGMA busy_timeout = 10000")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{path} was written by a newer tunneld (schema {version}); upgrade tunneld")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            db.executescript(_SCHEMA)
            # An older relay's tables gain the columns they lack (its tokens stay reusable, as issued).
            for table, column, decl in (("nodes", "mtu", "INTEGER"), ("nodes", "lock", "BLOB"),
                                        ("tokens", "max_uses", "INTEGER NOT NULL DEFAULT 0")):
                if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            # Touch every table so that a damaged file fails here, not mid-join.
            db.execute("SELECT count(*) FROM nodes").fetchone()
            db.execute("PRAGMA quick_check").fetchone()
        except sqlite3.DatabaseError as exc:
            if db is not None:
                db.close()
            raise StoreError(f"state database {path} is unreadable ({exc}); restore it from a backup, "
                             "or move it away to start with no nodes") from None
        except OSError as exc:
            raise StoreError(f"cannot open the state database {path}: {exc.strerror}") from None
        except StoreError:
            db.close()
            raise
        for name in (path, path + "-wal", path + "-shm"):  # those an older release made 0644
            if os.path.exists(name) and os.stat(name).st_mode & 0o077:
                os.chmod(name, 0o600)
        return db

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _transaction(self, fn, *args):
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = fn(db, *args)
            db.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            db.execute("ROLLBACK")
            raise Conflict(str(exc)) from None
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return result

    # -- reads ---------------------------------------------------------------------------

    def _load(self) -> Snapshot:
        db = self._db
        return Snapshot(
            meta=dict(db.execute("SELECT key, value FROM meta").fetchall()),
            nodes=[NodeRecord(*r) for r in db.execute(f"SELECT {_NODE_COLUMNS} FROM nodes ORDER BY name")],
            revoked_keys={r[0] for r in db.execute("SELECT public_key FROM revoked_keys")},
            tokens=[_token(r) for r in db.execute(f"SELECT {_TOKEN_COLUMNS} FROM tokens ORDER BY created")],
            routes=_routes(db.execute("SELECT name, prefix FROM approved_routes ORDER BY name, prefix")),
        )

    async def load(self) -> Snapshot:
        return await self._run(self._load)

    # -- writes --------------------------------------------------------------------------

    @staticmethod
    def _register(db, record: NodeRecord, token_id: bytes | None) -> None:
        row = db.execute("SELECT public_key, address FROM nodes WHERE name = ?", (record.name,)).fetchone()
        if row is not None:
            if row[0] is not None or row[1] != record.address:
                raise Conflict(f"name {record.name!r} is taken")
            db.execute("UPDATE nodes SET public_key = ?, mtu = ?, lock = ? WHERE name = ?",
                       (record.public_key, record.mtu, record.lock, record.name))
        else:
            db.execute(f"INSERT INTO nodes ({_NODE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (record.name, record.address, record.public_key, record.created, record.last_seen,
                        record.mtu, record.lock))
        if token_id is not None:
            db.execute("UPDATE tokens SET uses = uses + 1 WHERE token_id = ?", (token_id,))

    async def register(self, record: NodeRecord, token_id: bytes | None) -> None:
        await self._run(self._transaction, self._register, record, token_id)

    @classmethod
    def _register_many(cls, db, items) -> None:
        for record, token_id in items:
            cls._register(db, record, token_id)

    async def register_many(self, items: list[tuple[NodeRecord, bytes | None]]) -> None:
        await self._run(self._transaction, self._register_many, items)

    async def set_mtu(self, name: str, mtu: int) -> None:
        await self._run(self._db.execute, "UPDATE nodes SET mtu = ? WHERE name = ?", (mtu, name))

    async def set_lock(self, name: str, lock: bytes) -> None:
        await self._run(self._db.execute, "UPDATE nodes SET lock = ? WHERE name = ?", (lock, name))

    @staticmethod
    def _set_routes(db, name: str, prefixes) -> None:
        db.execute("DELETE FROM approved_routes WHERE name = ?", (name,))
        db.executemany("INSERT INTO approved_routes VALUES (?, ?)", [(name, p) for p in prefixes])

    async def set_routes(self, name: str, prefixes: tuple[str, ...]) -> None:
        await self._run(self._transaction, self._set_routes, name, prefixes)

    @staticmethod
    def _touch(db, seen: dict[str, float]) -> None:
        db.executemany("UPDATE nodes SET last_seen = ? WHERE name = ?", [(when, name) for name, when in seen.items()])

    async def touch(self, seen: dict[str, float]) -> None:
        await self._run(self._transaction, self._touch, seen)  # one transaction, one fsync, for all

    @staticmethod
    def _revoke_node(db, name: str, key: bytes, now: float) -> None:
        db.execute("INSERT OR REPLACE INTO revoked_keys VALUES (?, ?, ?)", (key, name, now))
        db.execute("UPDATE nodes SET public_key = NULL, lock = NULL WHERE name = ? AND public_key = ?", (name, key))
        db.execute("DELETE FROM approved_routes WHERE name = ?", (name,))  # the next key is approved anew

    async def revoke_node(self, name: str, key: bytes, now: float) -> None:
        await self._run(self._transaction, self._revoke_node, name, key, now)

    async def add_token(self, token: TokenRecord) -> None:
        await self._run(self._db.execute, f"INSERT INTO tokens ({_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (token.token_id, token.secret_hash, token.created, token.expires, int(token.revoked),
                         token.uses, token.max_uses))

    async def revoke_token(self, token_id: bytes) -> None:
        await self._run(self._db.execute, "UPDATE tokens SET revoked = 1 WHERE token_id = ?", (token_id,))

    async def set_meta(self, key: str, value: str) -> None:
        await self._run(self._db.execute, "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    async def save_presence(self, changes: dict) -> None:
        pass  # one relay: where nodes are homed is no one else's business

    async def close(self) -> None:
        await self._run(self._db.close)
        self._thread.shutdown()

    def close_now(self) -> None:
        """Close without an event loop (the command line's)."""
        self._thread.submit(self._db.close).result()
        self._thread.shutdown()
