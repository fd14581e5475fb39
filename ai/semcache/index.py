"""``PartitionIndex``: the entries of one partition as a bounded numpy matrix.

Brute-force cosine search (one matrix-vector product over unit rows) is exact, with no
ANN structure to tune or rebuild; ``python -m perf semcache --pairs F --json OUT``
times lookups on a partition of up to ``max_entries_per_partition`` entries. Rows are
kept contiguous: a removed row is replaced by the last one. When full, expired entries
are dropped first, then the least recently used one (a hit counts as a use). Not
thread-safe by itself: ``SemanticCacheImpl`` holds its lock.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ai.semcache.guards import Features

_INITIAL_ROWS = 16


@dataclass(frozen=True, slots=True)
class Candidate:
    """A stored entry near the query: its row, id, similarity and guard features."""

    row: int
    entry_id: str
    similarity: float
    features: Features


class PartitionIndex:
    """Unit vectors with their entry ids and texts; bounded, with TTL and LRU."""

    def __init__(self, dim: int, max_entries: int, ttl: float | None) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        rows = min(_INITIAL_ROWS, max_entries)
        self._vectors: npt.NDArray[np.float32] = np.zeros((rows, dim), dtype=np.float32)
        self._added: npt.NDArray[np.float64] = np.zeros(rows, dtype=np.float64)
        self._used: npt.NDArray[np.float64] = np.zeros(rows, dtype=np.float64)
        self._ids: list[str] = []
        self._features: list[Features] = []
        self._row_of: dict[str, int] = {}
        self.dropped: list[str] = []  # texts the last ``add`` removed (for the store)

    def __len__(self) -> int:
        return len(self._ids)

    def add(
        self, features: Features, entry_id: str, vector: npt.NDArray[np.float32], now: float
    ) -> int:
        """Store (or refresh) ``features.text``; returns the change in entry count.
        Texts it removed to make room (expired, then LRU) are left in ``dropped``."""
        self.dropped.clear()
        row = self._row_of.get(features.text)
        if row is not None:
            self._ids[row] = entry_id
            self._vectors[row] = vector
            self._added[row] = self._used[row] = now
            return 0
        before = len(self)
        if before >= self.max_entries:
            self.purge_expired(now)
            if len(self) >= self.max_entries:
                self._remove(int(np.argmin(self._used[: len(self)])))
        row = len(self)
        if row == self._vectors.shape[0]:
            self._grow()
        self._vectors[row] = vector
        self._added[row] = self._used[row] = now
        self._ids.append(entry_id)
        self._features.append(features)
        self._row_of[features.text] = row
        return len(self) - before

    def search(
        self, vector: npt.NDArray[np.float32], threshold: float, limit: int, now: float
    ) -> list[Candidate]:
        """Up to ``limit`` live entries with cosine >= ``threshold``, most similar first."""
        n = len(self)
        if n == 0:
            return []
        sims = self._vectors[:n] @ vector
        if self.ttl is not None:
            sims[self._added[:n] <= now - self.ttl] = -np.inf
        above = np.flatnonzero(sims >= threshold)
        if above.size > limit:
            above = above[np.argpartition(-sims[above], limit - 1)[:limit]]
        order = above[np.argsort(-sims[above], kind="stable")]
        return [Candidate(int(r), self._ids[r], float(sims[r]), self._features[r]) for r in order]

    def touch(self, row: int, now: float) -> None:
        """Mark ``row`` as used (LRU)."""
        self._used[row] = now

    def purge_expired(self, now: float) -> int:
        """Drop entries older than the TTL; returns how many went."""
        if self.ttl is None:
            return 0
        expired = np.flatnonzero(self._added[: len(self)] <= now - self.ttl)
        for row in expired[::-1]:  # from the end, so rows still to remove do not move
            self._remove(int(row))
        return int(expired.size)

    def discard(self, text: str) -> bool:
        """Remove ``text`` if held; True if it was."""
        row = self._row_of.get(text)
        if row is None:
            return False
        self._remove(row)
        return True

    def _remove(self, row: int) -> None:
        last = len(self) - 1
        self.dropped.append(self._features[row].text)
        del self._row_of[self._features[row].text]
        if row != last:
            self._vectors[row] = self._vectors[last]
            self._added[row] = self._added[last]
            self._used[row] = self._used[last]
            self._ids[row] = self._ids[last]
            self._features[row] = self._features[last]
            self._row_of[self._features[row].text] = row
        self._ids.pop()
        self._features.pop()

    def _grow(self) -> None:
        rows = min(self.max_entries, 2 * self._vectors.shape[0])
        vectors = np.zeros((rows, self._vectors.shape[1]), dtype=np.float32)
        vectors[: len(self)] = self._vectors[: len(self)]
        self._vectors = vectors
        self._added = np.resize(self._added, rows)
        self._used = np.resize(self._used, rows)
