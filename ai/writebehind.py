"""A SQLite file owned by one thread, written behind the event loop.

The base of :class:`~ai.cache.ExactCache` and :class:`~ai.state.StateStore`: every
SQLite call runs on one dedicated thread; changes collect on the event loop and the
first one arms a timer (``window_s``), which hands the whole batch to the thread
(:meth:`WriteBehind._write`, one transaction); :meth:`WriteBehind.flush` waits until
everything handed over is committed.
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


class WriteBehind:
    """One SQLite connection on one thread; a subclass collects changes, calls
    :meth:`_arm` for each and hands them over in :meth:`_write`."""

    def __init__(self, thread_name: str, window_s: float) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
        self._window = window_s
        self._db: sqlite3.Connection | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._writing: asyncio.Future[Any] | None = None  # the batch the thread writes

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @staticmethod
    def _connect(path: Path | None, busy_timeout_ms: int = 0) -> sqlite3.Connection:
        """(On the thread.) The file in WAL mode, autocommit (explicit BEGIN/COMMIT);
        a busy timeout, when given, is set first so that it covers the WAL switch."""
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        target = ":memory:" if path is None else str(path)
        db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        if busy_timeout_ms:
            db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _arm(self) -> None:
        """A change arrived: write it after the window, unless a write is pending."""
        if self._timer is None and self._writing is None:
            self._timer = asyncio.get_running_loop().call_later(self._window, self._write)

    def _write(self) -> None:
        """Hand the collected changes to the thread (sets ``_writing``)."""
        raise NotImplementedError

    async def flush(self) -> None:
        """Wait until every change handed over so far is committed."""
        if self._timer is not None:
            self._timer.cancel()
            self._write()
        while self._writing is not None:
            await asyncio.wait([self._writing])  # a failure is logged where it is handled
            await asyncio.sleep(0)  # let the done callback run (it may start another)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def close(self) -> None:
        """Commit everything handed over, then close the file and the thread."""
        await self.flush()
        await self._run(self._close)
        self._pool.shutdown(wait=True)
