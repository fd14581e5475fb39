"""``SemanticStore``: the semantic cache's entries and vectors in SQLite, across restarts.

Like the exact cache (``ai.cache``), entries live in one SQLite file; here each row is
``(partition, text, entry_id, vector, added)`` with the vector as little-endian
float32 bytes and ``added`` as wall-clock time (the index's monotonic clock does not
survive a restart). At start :meth:`load` returns the live rows oldest first, so the
index is rebuilt under its own bounds (TTL, per-partition, partition and total
limits); rows the rebuilt index dropped are deleted with :meth:`keep_only`, and the
same compaction runs while serving once the file holds twice the total bound, so the
file stays bounded. Calls come from the cache's worker threads under its lock.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
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
        self.rows = int(self._db.execute("SELECT COUNT(*) FROM semantic").fetchone()[0])

    def load(self, ttl_s: float | None) -> Iterator[StoredEntry]:
        """Live rows, oldest first; expired ones and vectors of another size are deleted."""
        now = time.time()
        if ttl_s is not None:
            self._db.execute("DELETE FROM semantic WHERE added <= ?", (now - ttl_s,))
        self._db.execute("DELETE FROM semantic WHERE length(vector) != ?", (4 * self._dim,))
        rows = self._db.execute(
            "SELECT partition, text, entry_id, vector, added FROM semantic ORDER BY added"
        ).fetchall()
        self.rows = len(rows)
        for partition, text, entry_id, blob, added in rows:
            vector = np.frombuffer(blob, dtype="<f4").astype(np.float32)
            yield StoredEntry(partition, text, entry_id, vector, max(0.0, now - added))

    def put(
        self, partition: str, text: str, entry_id: str, vector: npt.NDArray[np.float32]
    ) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO semantic (partition, text, entry_id, vector, added) "
            "VALUES (?, ?, ?, ?, ?)",
            (partition, text, entry_id, vector.astype("<f4").tobytes(), time.time()),
        )
        self.rows += 1  # a replaced row counts too: compaction recounts

    def keep_only(self, live: Iterable[tuple[str, str]]) -> None:
        """Delete every row whose ``(partition, text)`` is not in ``live``."""
        self._db.execute("BEGIN")
        try:
            self._db.execute("CREATE TEMP TABLE IF NOT EXISTS live (p TEXT, t TEXT)")
            self._db.execute("DELETE FROM live")
            self._db.executemany("INSERT INTO live VALUES (?, ?)", live)
            self._db.execute(
                "DELETE FROM semantic WHERE NOT EXISTS "
                "(SELECT 1 FROM live WHERE p = semantic.partition AND t = semantic.text)"
            )
            self._db.execute("DELETE FROM live")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.rows = int(self._db.execute("SELECT COUNT(*) FROM semantic").fetchone()[0])

    def close(self) -> None:
        self._db.close()
