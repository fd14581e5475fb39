"""``SemanticCacheImpl``: the ``SemanticCache`` the gateway calls, and its factory.

A lookup embeds the last user message off the event loop (a dedicated thread pool:
onnxruntime releases the GIL), searches the partition's matrix, and returns the most
similar entry that is above the threshold and passes every enabled guard. A partition
that holds nothing is answered without embedding. The vector of a missed lookup is
kept briefly, so the ``add`` that follows the upstream answer does not embed again.
With ``path`` configured, entries and their vectors are also written to SQLite
(``ai.semcache.store``) and the index is rebuilt from it at start, under its bounds.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from ai.semcache.config import SemCacheConfig
from ai.semcache.embedder import EMBEDDERS, Embedder
from ai.semcache.guards import Features, check, enabled_guards
from ai.semcache.index import PartitionIndex
from ai.semcache.store import SemanticStore
from ai.semcache_api import SemanticHit

log = logging.getLogger("spectra.ai")

_RECENT_VECTORS = 1024


class UnknownEmbedder(ValueError):
    """The configured embedder name is not in the registry."""


class SemanticCacheImpl:
    """Per-partition brute-force cosine search with threshold, guards, TTL and bounds."""

    def __init__(
        self,
        config: SemCacheConfig,
        embedder: Embedder,
        *,
        clock: Callable[[], float] = time.monotonic,
        workers: int = 2,
        store: SemanticStore | None = None,
    ) -> None:
        self.config = config
        self.embedder = embedder
        self._clock = clock
        self._guards = enabled_guards(config.guards)
        self._lock = threading.Lock()
        self._partitions: OrderedDict[str, PartitionIndex] = OrderedDict()
        self._total = 0
        self._recent: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="semcache")
        self._store = store

    def restore(self) -> int:
        """Rebuild the index from the store (oldest first, under the bounds); rows the
        bounds drop are deleted from the store. Returns the entries restored."""
        if self._store is None:
            return 0
        with self._lock, self._store.transaction():
            self._rebuild(self._store)
        log.info("semantic cache restored %d entries", self._total)
        return self._total

    def _rebuild(self, store: SemanticStore) -> None:
        now = self._clock()
        for row in store.load(self.config.ttl_seconds):
            index = self._index(row.partition)
            self._partitions.move_to_end(row.partition)
            self._total += index.add(Features(row.text), row.entry_id, row.vector, now - row.age_s)
            store.delete(row.partition, index.dropped)
            self._enforce_bounds()

    @property
    def total_entries(self) -> int:
        return self._total

    def partition_size(self, partition: str) -> int:
        with self._lock:
            index = self._partitions.get(partition)
            return 0 if index is None else len(index)

    async def lookup(self, partition: str, text: str) -> SemanticHit | None:
        if not self._usable(text) or self.partition_size(partition) == 0:
            return None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.lookup_sync, partition, text)

    async def add(self, partition: str, text: str, entry_id: str, tenant: str = "") -> None:
        if not self._usable(text):
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self.add_sync, partition, text, entry_id)

    async def embed_for_add(self, text: str) -> npt.NDArray[np.float32] | None:
        """The vector ``add`` would store for ``text`` (None: not eligible)."""
        if not self._usable(text):
            return None
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, functools.partial(self._vector, text, remember=False)
        )

    async def run(self, fn: Callable[[], None]) -> None:
        """``fn()`` on the cache's worker threads (index work too long for the loop)."""
        await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def warm_up(self) -> None:
        """Load the model now rather than on the first request."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self.embedder.embed, ["warm up"])

    def close(self) -> None:
        """Stop the worker threads (pending calls finish first)."""
        self._pool.shutdown(wait=True)
        if self._store is not None:
            self._store.close()

    def lookup_sync(self, partition: str, text: str) -> SemanticHit | None:
        """The blocking body of ``lookup`` (also used by the evaluation)."""
        vector = self._vector(text, remember=True)
        query = Features(text)
        with self._lock:
            index = self._partitions.get(partition)
            if index is None:
                return None
            self._partitions.move_to_end(partition)
            now = self._clock()
            candidates = index.search(vector, self.config.threshold, self.config.candidates, now)
            for candidate in candidates:
                failed = check(candidate.features, query, self._guards)
                if failed is None:
                    index.touch(candidate.row, now)
                    return SemanticHit(
                        candidate.entry_id, candidate.similarity, candidate.features.text
                    )
                log.debug(
                    "semantic candidate %.3f refused by the %s guard",
                    candidate.similarity,
                    failed,
                )
        return None

    def add_sync(self, partition: str, text: str, entry_id: str) -> npt.NDArray[np.float32]:
        """The blocking body of ``add``; returns the vector."""
        vector = self._vector(text, remember=False)
        self.insert_sync(partition, text, entry_id, vector, 0.0)
        return vector

    def insert_sync(
        self,
        partition: str,
        text: str,
        entry_id: str,
        vector: npt.NDArray[np.float32],
        age_s: float,
    ) -> None:
        """Index an entry whose vector is known (``age_s`` old: one another instance
        shared), under the same bounds as ``add``."""
        if self.config.ttl_seconds is not None and age_s >= self.config.ttl_seconds:
            return
        features = Features(text)
        with self._lock:
            index = self._index(partition)
            self._partitions.move_to_end(partition)
            self._total += index.add(features, entry_id, vector, self._clock() - age_s)
            self._enforce_bounds()
            if self._store is not None:
                with self._store.transaction():
                    self._store.delete(partition, index.dropped)
                    self._store.put(partition, text, entry_id, vector)

    def discard_sync(self, partition: str, text: str) -> None:
        """Forget ``text`` in ``partition`` (evicted from the shared store)."""
        with self._lock:
            index = self._partitions.get(partition)
            if index is not None and index.discard(text):
                self._total -= 1
                if self._store is not None:
                    self._store.delete(partition, [text])

    def clear_sync(self) -> None:
        """Forget every entry (before reloading from a shared store)."""
        with self._lock:
            self._partitions.clear()
            self._total = 0

    def _index(self, partition: str) -> PartitionIndex:
        index = self._partitions.get(partition)
        if index is None:
            index = PartitionIndex(
                self.embedder.dim,
                self.config.max_entries_per_partition,
                self.config.ttl_seconds,
            )
            self._partitions[partition] = index
        return index

    def _usable(self, text: str) -> bool:
        return self.config.enabled and 0 < len(text) <= self.config.max_text_chars

    def _vector(self, text: str, *, remember: bool) -> npt.NDArray[np.float32]:
        with self._lock:
            cached = self._recent.get(text) if remember else self._recent.pop(text, None)
            if cached is not None and remember:
                self._recent.move_to_end(text)
        if cached is not None:
            return cached
        vector: npt.NDArray[np.float32] = self.embedder.embed([text])[0]
        if remember:
            with self._lock:
                self._recent[text] = vector
                if len(self._recent) > _RECENT_VECTORS:
                    self._recent.popitem(last=False)
        return vector

    def _enforce_bounds(self) -> None:
        """Drop least recently used partitions (never the newest) past the global bounds."""
        while len(self._partitions) > 1 and (
            len(self._partitions) > self.config.max_partitions
            or self._total > self.config.max_total_entries
        ):
            name, index = self._partitions.popitem(last=False)
            self._total -= len(index)
            if self._store is not None:
                self._store.delete_partition(name)
            log.debug("semantic cache evicted partition %s (%d entries)", name, len(index))


def create_semantic_cache(
    config: SemCacheConfig,
    embedder: Embedder | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> SemanticCacheImpl:
    """The semantic cache ``config`` describes; ``embedder`` overrides the registry's."""
    if embedder is None:
        factory = EMBEDDERS.get(config.embedder)
        if factory is None:
            raise UnknownEmbedder(
                f"semantic cache: unknown embedder {config.embedder!r}; "
                f"accepted: {sorted(EMBEDDERS)}"
            )
        embedder = factory(config)
    store = None if config.path is None else SemanticStore(config.path, embedder.dim)
    cache = SemanticCacheImpl(config, embedder, clock=clock, store=store)
    cache.restore()
    return cache
