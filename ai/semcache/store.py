"""``SemanticStore``: the semantic cache's entries and vectors in SQLite, across restarts.

Like the exact cache (``ai.cache``), entries live in one SQLite file; here each row is
``(partition, text, entry_id, vector, added)`` with the vector as little-endian
float32 bytes and ``added`` as wall-clock time (the index's monotonic clock does not
survive a restart). At start :meth:`load` returns the live rows oldest first, so the
index is rebuilt under its own bounds (TTL, per-partition, partition and total
limits). Every entry the index drops (expired, least recently used, an evicted
partition), at start or while serving, is deleted here too, so the file holds what
the index holds. Calls come from the cache's worker threads under its lock.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

SCHEMA = """
CREATE TABLE IF NOT EXISTS semantic (
    partition TEXT NOT NULL, text TEXT NOT NULL, entry_id TEXT NOT NULL,
    vector BLOB NOT NULL, added REAL NOT NULL, PRIMARY KEY (partition, text)
);
"""


@dataclass(frozen=True, slots=True)
class StoredEntry:
    partition: str
    text: str
    entry_id: str
    vector: npt.NDArray[np.float32]
    age_s: float  # seconds since it was added, by the wall clock


class SemanticStore:
    """One SQLite file of semantic entries (WAL, one connection shared under a lock)."""

    def __init__(self, path: Path, dim: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._dim = dim
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def load(self, ttl_s: float | None) -> Iterator[StoredEntry]:
        """Live rows, oldest first; expired ones and vectors of another size are deleted."""
        now = time.time()
        if ttl_s is not None:
            self._db.execute("DELETE FROM semantic WHERE added <= ?", (now - ttl_s,))
        self._db.execute("DELETE FROM semantic WHERE length(vector) != ?", (4 * self._dim,))
        rows = self._db.execute(
            "SELECT partition, text, entry_id, vector, added FROM semantic ORDER BY added"
        ).fetchall()
        for partition, text, entry_id, blob, added in rows:
            vector = np.frombuffer(blob, dtype="<f4").astype(np.float32)
            yield StoredEntry(partition, text, entry_id, vector, max(0.0, now - added))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Commit what the block writes at once (or nothing, if it raises)."""
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def put(
        self, partition: str, text: str, entry_id: str, vector: npt.NDArray[np.float32]
    ) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO semantic (partition, text, entry_id, vector, added) "
            "VALUES (?, ?, ?, ?, ?)",
            (partition, text, entry_id, vector.astype("<f4").tobytes(), time.time()),
        )

    def delete(self, partition: str, texts: Iterable[str]) -> None:
        self._db.executemany(
            "DELETE FROM semantic WHERE partition = ? AND text = ?",
            ((partition, text) for text in texts),
        )

    def delete_partition(self, partition: str) -> None:
        self._db.execute("DELETE FROM semantic WHERE partition = ?", (partition,))

    def close(self) -> None:
        self._db.close()
