"""Exact response cache: SQLite on disk, TTL and entry bound, tenant-checked reads.

Keys come from :func:`ai.canonical.exact_key` (tenant + canonical resolved request),
so tenants are partitioned by construction; the stored tenant is also compared on
read. Values are complete responses only (``{"choices": [...], "usage": {...}}``):
stream and non-stream share them. SQLite calls run on one dedicated thread, off the
event loop. The keys held are also kept in memory, so a miss (the common case) is
answered without a thread hop; writes are queued for ``write_window_s`` and committed
in one transaction by that thread, and a read of a key still queued is answered from
the queue. :class:`SingleFlight`
coalesces concurrent identical requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from typing import Any

from ai.config import ExactCacheConfig
from ai.writebehind import WriteBehind

log = logging.getLogger("spectra.ai")

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY, tenant TEXT NOT NULL, value TEXT NOT NULL,
    created REAL NOT NULL, expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_created ON entries (created);
"""


class ExactCache(WriteBehind):
    """The on-disk (or ``:memory:``) exact cache."""

    remote = False

    def __init__(self, config: ExactCacheConfig) -> None:
        super().__init__("spectra-ai-cache", config.write_window_s)
        self._config = config
        self._count = 0
        # Event-loop side: keys in the database (or on their way) and writes not yet
        # handed to the thread.
        self._keys: set[str] = set()
        self._queued: dict[str, tuple[str, str]] = {}

    def _open(self) -> set[str]:
        db = self._connect(self._config.path)
        db.executescript(SCHEMA)
        db.execute("DELETE FROM entries WHERE expires < ?", (time.time(),))
        keys = {row[0] for row in db.execute("SELECT key FROM entries")}
        self._count = len(keys)
        self._db = db
        return keys

    async def open(self) -> None:
        self._keys = await self._run(self._open)

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
        if key not in self._keys:
            return None
        queued = self._queued.get(key)
        if queued is not None:
            stored: dict[str, Any] | None = json.loads(queued[1]) if queued[0] == tenant else None
            return stored
        # Submitted after any batch holding the key: the thread reads its own writes.
        result: dict[str, Any] | None = await self._run(self._get, key, tenant)
        return result

    def _put_many(self, rows: list[tuple[str, str, str]]) -> list[str]:
        """Write ``(key, tenant, value)`` rows in one transaction; returns evicted keys."""
        db = self._db
        assert db is not None
        now = time.time()
        expires = now + self._config.ttl_s
        evicted: list[str] = []
        db.execute("BEGIN")
        try:
            for key, tenant, value in rows:
                existed = db.execute("SELECT 1 FROM entries WHERE key = ?", (key,)).fetchone()
                db.execute(
                    "INSERT OR REPLACE INTO entries (key, tenant, value, created, expires) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (key, tenant, value, now, expires),
                )
                self._count += 0 if existed else 1
            if self._count > self._config.max_entries:
                evicted += self._evict(db, now)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return evicted

    def _evict(self, db: sqlite3.Connection, now: float) -> list[str]:
        expired = db.execute("DELETE FROM entries WHERE expires < ? RETURNING key", (now,))
        evicted = [r[0] for r in expired]
        over = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0] - self._config.max_entries
        if over > 0:
            evicted += [
                r[0]
                for r in db.execute(
                    "DELETE FROM entries WHERE key IN "
                    "(SELECT key FROM entries ORDER BY created, rowid LIMIT ?) RETURNING key",
                    (over,),
                )
            ]
        self._count = db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        return evicted

    async def put(self, key: str, tenant: str, value: dict[str, Any]) -> None:
        """Queue the entry (readable at once through :meth:`get`); :meth:`flush` waits
        until it is committed."""
        self._keys.add(key)
        self._queued[key] = (tenant, json.dumps(value))
        self._arm()

    def _write(self) -> None:
        self._timer = None
        rows = [(k, t, v) for k, (t, v) in self._queued.items()]
        loop = asyncio.get_running_loop()
        self._writing = loop.run_in_executor(self._pool, self._put_many, rows)
        self._writing.add_done_callback(lambda done: self._written(done, rows))

    def _written(self, done: asyncio.Future[list[str]], rows: list[tuple[str, str, str]]) -> None:
        self._writing = None
        for key, tenant, value in rows:
            if self._queued.get(key) == (tenant, value):
                del self._queued[key]  # unless queued again meanwhile
        if done.cancelled() or done.exception() is not None:
            log.error("exact cache write of %d entries failed: %s", len(rows), done.exception())
            self._keys.difference_update(k for k, _, _ in rows if k not in self._queued)
        else:
            self._keys.difference_update(k for k in done.result() if k not in self._queued)
        if self._queued and self._timer is None:
            self._write()

    async def lookup(self, key: str, tenant: str) -> tuple[dict[str, Any] | None, bool]:
        """:meth:`get` (one process takes no lock outside it)."""
        return await self.get(key, tenant), False

    def start_lookup(
        self, key: str, tenant: str
    ) -> asyncio.Future[tuple[dict[str, Any] | None, bool]]:
        return asyncio.ensure_future(self.lookup(key, tenant))

    async def coalesce(self, key: str, tenant: str) -> dict[str, Any] | None:
        """One process: :class:`SingleFlight` already coalesces; this caller leads."""
        return None

    async def release(self, key: str, tenant: str) -> None:
        """Nothing held outside this process."""

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
