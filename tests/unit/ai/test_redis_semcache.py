"""The semantic cache shared through a real ``redis-server``: two in-process instances
(each its own index and link, as two gateways would have) see each other's entries,
load them at start, follow evictions, catch up after an outage (replaying when the
stream moved past them), and keep tenants apart in the store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from ai.config import RedisConfig
from ai.redis_link import RedisLink
from ai.redis_semcache import RedisSemanticCache
from ai.semcache import SemanticCacheImpl, SemCacheConfig
from tests.redisd import RedisServer
from tests.unit.ai.semcache.conftest import FakeEmbedder

Q = "How do I learn to cook pasta at home?"
Q2 = "how do i learn to cook pasta at home"
Instance = Callable[..., Awaitable[RedisSemanticCache]]


@pytest_asyncio.fixture
async def instance(redis_server: RedisServer) -> AsyncIterator[Instance]:
    made: list[tuple[RedisLink, RedisSemanticCache]] = []

    async def make(**settings: object) -> RedisSemanticCache:
        config = RedisConfig.model_validate(
            {"host": "127.0.0.1", "port": redis_server.port, "backoff_max_s": 0.3}
        )
        link = RedisLink(config, {})
        await link.open()
        local = SemanticCacheImpl(SemCacheConfig.model_validate(settings), FakeEmbedder())
        shared = RedisSemanticCache(link, local)
        await shared.open()
        made.append((link, shared))
        return shared

    yield make
    for link, shared in made:
        await shared.close()
        await link.close()
        shared.local.close()


async def _until(check: Callable[[], bool], what: str, seconds: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not check():
        if loop.time() > deadline:
            pytest.fail(f"not within {seconds} s: {what}")
        await asyncio.sleep(0.02)


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_an_entry_written_by_one_is_found_by_the_other(instance: Instance) -> None:
    one, two = await instance(), await instance()
    await one.add("P-a", Q, "exact-1", "ta")
    await _until(lambda: two.local.partition_size("P-a") == 1, "the entry reached two")
    hit = await two.lookup("P-a", Q2)
    assert hit is not None and hit.entry_id == "exact-1"
    assert await two.lookup("P-b", Q2) is None  # another tenant's partition holds nothing


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_a_new_instance_loads_what_the_store_holds(
    instance: Instance, redis_server: RedisServer
) -> None:
    one = await instance()
    for i in range(3):
        await one.add("P-a", f"{Q} {i}", f"exact-{i}", "ta")
    await one.add("P-b", Q, "exact-b", "tb")
    late = await instance()  # started after the writes: replays the stream at open
    assert late.local.partition_size("P-a") == 3
    assert late.local.partition_size("P-b") == 1
    # tenant-partitioned in the store: each tenant's entries under its own hash tag
    keys = redis_server.cli("--scan", "--pattern", "spectra:ai:*:sem:*").split()
    tags = {key.split(":")[2] for key in keys}
    assert len(keys) == 4 and len(tags) == 2
    tenant_of = {json.loads(redis_server.cli("GET", k))["entry_id"]: k.split(":")[2] for k in keys}
    assert tenant_of["exact-b"] != tenant_of["exact-0"]
    ttl = int(redis_server.cli("PTTL", keys[0]))
    assert 0 < ttl <= 86_400_000


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_expired_entries_are_not_loaded(instance: Instance) -> None:
    one = await instance(ttl_seconds=0.2)
    await one.add("P-a", Q, "exact-1", "ta")
    await asyncio.sleep(0.3)
    late = await instance(ttl_seconds=0.2)
    assert late.local.partition_size("P-a") == 0


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_the_bound_evicts_on_every_instance(
    instance: Instance, redis_server: RedisServer
) -> None:
    bounds = {"max_total_entries": 2, "max_entries_per_partition": 2}
    one, two = await instance(**bounds), await instance(**bounds)
    await one.add("P-a", "first question about rust", "e1", "ta")
    await one.add("P-a", "second question about go", "e2", "ta")
    await _until(lambda: two.local.partition_size("P-a") == 2, "two holds both")
    await one.add("P-c", "third question about zig", "e3", "ta")  # over the tenant's bound
    await _until(lambda: two.local.partition_size("P-a") == 1, "two dropped the evicted one")
    assert await two.lookup("P-a", "first question about rust") is None
    (index,) = redis_server.cli("--scan", "--pattern", "spectra:ai:*:sem-index:all").split()
    assert int(redis_server.cli("ZCARD", index)) == 2


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_catch_up_after_an_outage(instance: Instance, redis_server: RedisServer) -> None:
    one, two = await instance(), await instance()
    await one.add("P-a", Q, "e1", "ta")
    await _until(lambda: two.local.partition_size("P-a") == 1, "two has the first entry")
    redis_server.kill()
    await one.add("P-a", "an entry while the store is down", "lost", "ta")
    assert one.local.partition_size("P-a") == 1  # neither indexed nor shared
    assert await two.lookup("P-a", Q2) is not None  # the index still answers
    redis_server.start()  # empty again (no persistence): the stream starts over
    await _until(lambda: one._link.available, "one reconnected")
    await _until(lambda: two._link.available and not two._gap, "two caught up")
    await one.add("P-a", "what is the tallest mountain", "e2", "ta")
    await _until(lambda: two.local.partition_size("P-a") == 2, "two followed after the outage")
    assert two.reloads == 1  # nothing was missed: no replay


@pytest.mark.timeout(30)
@pytest.mark.asyncio
async def test_a_trimmed_stream_makes_a_follower_reload(
    instance: Instance, redis_server: RedisServer
) -> None:
    one, two = await instance(), await instance()
    await one.add("P-a", Q, "e1", "ta")
    await _until(lambda: two.local.partition_size("P-a") == 1, "two has the first entry")
    await two.close()  # stop following, as an unreachable store would
    two._gap = True
    await one.add("P-a", "what is the tallest mountain", "e2", "ta")
    stream = "spectra:ai:{semcache}:events"
    redis_server.cli("XTRIM", stream, "MAXLEN", "1")  # the first entry is gone
    await two.open()
    assert two.reloads == 2
    assert two.local.partition_size("P-a") == 1  # only what the stream still holds
    assert (await two.lookup("P-a", "what is the tallest mountain")) is not None
