"""The cache logic on the fake embedder: partition isolation, threshold, guards on the
hit path, bounds and eviction, TTL, async lookup/add, configuration errors, entries
surviving a restart (SQLite store)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pydantic
import pytest

from ai.semcache import (
    SemanticCache,
    SemanticCacheImpl,
    SemanticHit,
    SemCacheConfig,
    UnknownEmbedder,
    create_semantic_cache,
)
from tests.unit.ai.semcache.conftest import Clock, FakeEmbedder, at_similarity

pytestmark = pytest.mark.unit

Make = Callable[..., SemanticCacheImpl]
Q = "How do I learn to cook pasta at home?"


async def _add_then_lookup(
    cache: SemanticCache, add: list[tuple[str, str, str]], partition: str, text: str
) -> SemanticHit | None:
    for p, t, entry in add:
        await cache.add(p, t, entry)
    return await cache.lookup(partition, text)


def test_a_stored_text_is_found_in_its_partition(make_cache: Make) -> None:
    hit = asyncio.run(_add_then_lookup(make_cache(), [("A", Q, "e1")], "A", Q))
    assert hit is not None
    assert (hit.entry_id, hit.matched_text) == ("e1", Q)
    assert hit.similarity == pytest.approx(1.0)


def test_partition_b_never_sees_partition_a(make_cache: Make, embedder: FakeEmbedder) -> None:
    cache = make_cache()
    assert asyncio.run(_add_then_lookup(cache, [("A", Q, "a")], "B", Q)) is None
    assert embedder.calls == 1  # an empty partition is answered without embedding
    hit = asyncio.run(_add_then_lookup(cache, [("B", Q + " now", "b")], "B", Q))
    assert hit is not None and hit.entry_id == "b"


@pytest.mark.parametrize(("similarity", "hit"), [(0.949, False), (0.95, True), (0.99, True)])
def test_threshold(make_cache: Make, embedder: FakeEmbedder, similarity: float, hit: bool) -> None:
    stored, query = "How do I cook pasta?", "How should I cook pasta?"
    embedder.fixed[stored], embedder.fixed[query] = at_similarity(similarity)
    cache = make_cache(threshold=0.95)
    result = asyncio.run(_add_then_lookup(cache, [("A", stored, "e")], "A", query))
    assert (result is not None) is hit
    if result is not None:
        assert result.similarity == pytest.approx(similarity, abs=1e-5)


def test_a_candidate_failing_a_guard_is_skipped_for_the_next(
    make_cache: Make, embedder: FakeEmbedder
) -> None:
    query = "How do I cook pasta in 10 minutes?"
    near = "How do I cook pasta in 20 minutes?"  # closer, but the numbers differ
    far = "How can I cook pasta in 10 minutes?"
    embedder.fixed[query], embedder.fixed[near] = at_similarity(0.99)
    embedder.fixed[far] = at_similarity(0.96)[1]
    cache = make_cache(threshold=0.95)
    adds = [("A", near, "near"), ("A", far, "far")]
    hit = asyncio.run(_add_then_lookup(cache, adds, "A", query))
    assert hit is not None and hit.entry_id == "far"
    cache_without_guards = make_cache(threshold=0.95, guards={"numbers": False})
    hit = asyncio.run(_add_then_lookup(cache_without_guards, adds, "A", query))
    assert hit is not None and hit.entry_id == "near"


def test_partition_size_is_bounded_and_the_least_recently_used_goes(
    make_cache: Make, clock: Clock
) -> None:
    cache = make_cache(max_entries_per_partition=3, max_total_entries=10)
    texts = [f"How do I cook dish number {w}?" for w in ("one", "two", "three", "four")]

    async def scenario() -> list[SemanticHit | None]:
        for i, text in enumerate(texts[:3]):
            clock.now += 1
            await cache.add("A", text, f"e{i}")
        clock.now += 1
        assert await cache.lookup("A", texts[0]) is not None  # e0 is now the most recent
        clock.now += 1
        await cache.add("A", texts[3], "e3")  # full: e1 (least recently used) goes
        return [await cache.lookup("A", t) for t in texts]

    found = asyncio.run(scenario())
    assert [h.entry_id if h else None for h in found] == ["e0", None, "e2", "e3"]
    assert cache.partition_size("A") == 3 and cache.total_entries == 3


def test_adding_the_same_text_again_replaces_the_entry(make_cache: Make) -> None:
    cache = make_cache()
    hit = asyncio.run(_add_then_lookup(cache, [("A", Q, "old"), ("A", Q, "new")], "A", Q))
    assert hit is not None and hit.entry_id == "new"
    assert cache.total_entries == 1


def test_partitions_and_total_entries_are_bounded(make_cache: Make) -> None:
    cache = make_cache(max_partitions=2, max_entries_per_partition=2, max_total_entries=3)

    async def scenario() -> None:
        await cache.add("A", Q, "a1")
        await cache.add("B", Q, "b1")
        await cache.add("C", Q, "c1")  # three partitions: A (least recent) goes
        assert await cache.lookup("A", Q) is None
        await cache.add("B", Q + " again", "b2")
        await cache.add("C", Q + " again", "c2")  # four entries: B goes
        assert await cache.lookup("B", Q) is None
        assert await cache.lookup("C", Q) is not None

    asyncio.run(scenario())
    assert cache.total_entries == 2


def test_entries_expire_after_the_ttl(make_cache: Make, clock: Clock) -> None:
    cache = make_cache(ttl_seconds=60)

    async def scenario() -> tuple[SemanticHit | None, SemanticHit | None]:
        await cache.add("A", Q, "e")
        clock.now += 59
        fresh = await cache.lookup("A", Q)
        clock.now += 2
        return fresh, await cache.lookup("A", Q)

    fresh, stale = asyncio.run(scenario())
    assert fresh is not None and stale is None


def test_expired_entries_make_room_before_live_ones(make_cache: Make, clock: Clock) -> None:
    cache = make_cache(ttl_seconds=60, max_entries_per_partition=2, max_total_entries=2)

    async def scenario() -> SemanticHit | None:
        await cache.add("A", "old question about soup", "old")
        clock.now += 50
        await cache.add("A", "newer question about bread", "newer")
        clock.now += 20  # "old" has expired, "newer" has not
        await cache.add("A", "newest question about cake", "newest")
        return await cache.lookup("A", "newer question about bread")

    hit = asyncio.run(scenario())
    assert hit is not None and hit.entry_id == "newer"
    assert cache.partition_size("A") == 2


def test_concurrent_lookups_and_adds(make_cache: Make) -> None:
    cache = make_cache()

    async def scenario() -> list[SemanticHit | None]:
        await asyncio.gather(*(cache.add(f"P{i}", f"{Q} {i}", f"e{i}") for i in range(50)))
        return await asyncio.gather(*(cache.lookup(f"P{i}", f"{Q} {i}") for i in range(50)))

    hits = asyncio.run(scenario())
    assert [h.entry_id if h else None for h in hits] == [f"e{i}" for i in range(50)]


def test_a_missed_lookup_is_not_embedded_again_by_the_add(
    make_cache: Make, embedder: FakeEmbedder
) -> None:
    cache = make_cache()
    asyncio.run(_add_then_lookup(cache, [("A", "something else entirely", "x")], "A", Q))
    calls = embedder.calls
    asyncio.run(cache.add("A", Q, "q"))
    assert embedder.calls == calls


def test_disabled_cache_and_long_texts_are_never_matched(
    make_cache: Make, embedder: FakeEmbedder
) -> None:
    off = make_cache(enabled=False)
    assert asyncio.run(_add_then_lookup(off, [("A", Q, "e")], "A", Q)) is None
    short = make_cache(max_text_chars=10)
    assert asyncio.run(_add_then_lookup(short, [("A", Q, "e")], "A", Q)) is None
    assert embedder.calls == 0


def test_config_rejects_unknown_keys_and_inconsistent_bounds() -> None:
    with pytest.raises(pydantic.ValidationError, match="extra"):
        SemCacheConfig.model_validate({"treshold": 0.9})
    with pytest.raises(pydantic.ValidationError, match="max_total_entries"):
        SemCacheConfig(max_entries_per_partition=10, max_total_entries=5)
    with pytest.raises(pydantic.ValidationError):
        SemCacheConfig(threshold=1.5)


def test_unknown_embedder_names_the_accepted_ones() -> None:
    with pytest.raises(UnknownEmbedder, match="minilm-l6-int8"):
        create_semantic_cache(SemCacheConfig(embedder="nope"))


def test_entries_survive_a_restart(tmp_path: Path, embedder: FakeEmbedder, clock: Clock) -> None:
    """Fill, close, build a new cache over the same file: a similar prompt hits, the
    other partition still sees nothing, and the restored entries stay bounded."""
    config = SemCacheConfig(path=tmp_path / "sem.sqlite3", max_entries_per_partition=3)
    first = create_semantic_cache(config, embedder, clock=clock)
    for i, text in enumerate(["how do I reset my router password", "a", "b", "c"]):
        first.add_sync("p1", text, f"entry-{i}")
    first.add_sync("p1", "how do I reset my router password", "entry-0")  # most recent
    first.close()

    clock.now = 5.0  # a new process: its monotonic clock may be small
    embedder.calls = 0
    second = create_semantic_cache(config, embedder, clock=clock)
    try:
        assert embedder.calls == 0  # vectors come from the file, not the model
        assert second.partition_size("p1") == 3 and second.total_entries == 3
        hit = second.lookup_sync("p1", "How do I reset my router password?")
        assert hit is not None and hit.entry_id == "entry-0"
        assert second.lookup_sync("p2", "how do I reset my router password") is None
    finally:
        second.close()
    rows = sqlite3.connect(config.path).execute("SELECT COUNT(*) FROM semantic").fetchone()
    assert rows[0] == 3  # the row the bound evicted is gone from the file too


def test_restored_entries_keep_their_age(
    tmp_path: Path, embedder: FakeEmbedder, clock: Clock
) -> None:
    config = SemCacheConfig(path=tmp_path / "sem.sqlite3", ttl_seconds=60)
    first = create_semantic_cache(config, embedder, clock=clock)
    first.add_sync("p", "what is the capital of france", "e")
    first.add_sync("p", "what is the capital of spain", "fresh")
    first.close()
    with sqlite3.connect(config.path) as db:  # written 61 s ago by the wall clock
        db.execute("UPDATE semantic SET added = added - 61 WHERE entry_id = 'e'")
    second = create_semantic_cache(config, embedder, clock=clock)
    try:
        assert second.total_entries == 1
        assert second.lookup_sync("p", "what is the capital of france") is None
        hit = second.lookup_sync("p", "What is the capital of Spain?")
        assert hit is not None and hit.entry_id == "fresh"
    finally:
        second.close()


def test_store_holds_what_the_index_holds(
    tmp_path: Path, embedder: FakeEmbedder, clock: Clock
) -> None:
    """Entries the bounds drop while serving (an evicted partition, an LRU entry) leave
    the file at once, so it stays bounded like the index."""
    config = SemCacheConfig(
        path=tmp_path / "sem.sqlite3", max_partitions=2, max_entries_per_partition=2
    )
    cache = create_semantic_cache(config, embedder, clock=clock)
    try:
        for partition in ("p1", "p2", "p3"):
            for text in ("one apple", "two pears", "three plums"):
                clock.now += 1
                cache.add_sync(partition, text, f"{partition}-{text}")
        with sqlite3.connect(config.path) as db:
            rows = sorted(db.execute("SELECT partition, text FROM semantic").fetchall())
        assert rows == [
            ("p2", "three plums"),
            ("p2", "two pears"),
            ("p3", "three plums"),
            ("p3", "two pears"),
        ]
        assert cache.total_entries == 4
    finally:
        cache.close()
