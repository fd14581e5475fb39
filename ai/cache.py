"""Exact response cache: SQLite on disk, TTL and entry bound, tenant-checked reads.

Keys come from :func:`ai.canonical.exact_key` (tenant + canonical resolved request),
so tenants are partitioned by construction; the stored tenant is also compared on
read. Values are complete responses only (``{"choices": [...], "usage": {...}}``):
stream and non-stream share them. SQLite calls run on one dedicated thread, off the
event loop. :class:`SingleFlight` coalesces concurrent identical requests.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ai.config import ExactCacheConfig

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY, tenant TEXT NOT NULL, value TEXT NOT NULL,
    created REAL NOT NULL, expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_created ON entries (created);
"""


class ExactCache:
    """The on-disk (or ``:memory:``) exact cache."""

    def __init__(self, config: ExactCacheConfig) -> None:
        self._config = config
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spectra-ai-cache")
        self._db: sqlite3.Connection | None = None
        self._count = 0

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _open(self) -> None:
        path = str(self._config.path) if self._config.path else ":memory:"
        if self._config.path:
            self._config.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(SCHEMA)
        db.execute("DELETE FROM entries WHERE expires < ?", (time.time(),))
        self._count = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        self._db = db

    async def open(self) -> None:
        await self._run(self._open)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def close(self) -> None:
        await self._run(self._close)
        self._pool.shutdown(wait=True)

    def _get(self, key: str, tenant: str) -> dict[str, Any] | None:
        assert self._db is not None
        row = self._db.execute(
            "SELECT value, expires FROM entries WHERE key = ? AND tenant = ?", (key, tenant)
        ).fetchone()
        if row is None or row[1] < time.time():
            return None
        value: dict[str, Any] = json.loads(row[0])
        return value

    async def get(self, key: str, tenant: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self._run(self._get, key, tenant)
        return result

    def _put(self, key: str, tenant: str, value: str) -> None:
        db = self._db
        assert db is not None
        now = time.time()
        existed = db.execute("SELECT 1 FROM entries WHERE key = ?", (key,)).fetchone()
        db.execute(
            "INSERT OR REPLACE INTO entries (key, tenant, value, created, expires) "
            "VALUES (?, ?, ?, ?, ?)",
            (key, tenant, value, now, now + self._config.ttl_s),
        )
        self._count += 0 if existed else 1
        if self._count > self._config.max_entries:
            db.execute("DELETE FROM entries WHERE expires < ?", (now,))
            over = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0] - (
                self._config.max_entries
            )
            if over > 0:
                db.execute(
                    "DELETE FROM entries WHERE key IN "
                    "(SELECT key FROM entries ORDER BY created LIMIT ?)",
                    (over,),
                )
            self._count = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    async def put(self, key: str, tenant: str, value: dict[str, Any]) -> None:
        await self._run(self._put, key, tenant, json.dumps(value))

    def __len__(self) -> int:
        return self._count


class SingleFlight:
    """One in-flight upstream call per cache key; followers await the leader's result."""

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[dict[str, Any] | None]] = {}

    def follow(self, key: str) -> asyncio.Future[dict[str, Any] | None] | None:
        """The leader's future if a call is in flight; else register as leader (None)."""
        flight = self._flights.get(key)
        if flight is not None:
            return flight
        self._flights[key] = asyncio.get_running_loop().create_future()
        return None

    def finish(self, key: str, value: dict[str, Any] | None) -> None:
        """Leader done: publish the complete response (None = failed, followers go alone)."""
        flight = self._flights.pop(key, None)
        if flight is not None and not flight.done():
            flight.set_result(value)
