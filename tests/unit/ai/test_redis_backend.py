"""The redis state backend against a real ``redis-server`` (one process, in-process
clients): the Lua budget decides exactly as the local one, the shared cache keeps TTL,
bound and tenants, the singleflight lock, TLS + ACL user, the configuration's errors,
and the link's stance, fail-fast and reconnect."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic import ValidationError

from ai.backend import RedisBackend, state_backend
from ai.budget import Budgets, Reservation
from ai.config import AIConfig, BudgetConfig, ExactCacheConfig, RedisConfig
from ai.errors import BudgetExhausted, GatewayError, RateLimited
from ai.redis_budget import RedisBudgets, _unlimited
from ai.redis_cache import RedisExactCache
from ai.redis_link import RedisLink, StoreUnavailable
from ai.server import load_config
from ai.usage import Usage
from tests.certs import make_cert
from tests.redisd import RedisServer, free_port


def _config(port: int, **overrides: Any) -> RedisConfig:
    return RedisConfig.model_validate(
        {"host": "127.0.0.1", "port": port, "backoff_max_s": 0.3, **overrides}
    )


@pytest_asyncio.fixture
async def link(redis_server: RedisServer) -> AsyncIterator[RedisLink]:
    link = RedisLink(_config(redis_server.port), {})
    await link.open()
    try:
        yield link
    finally:
        await link.close()


# --- budgets: the same decisions as the local backend ----------------------------------

STEPS: list[tuple[BudgetConfig, int, int, float, int | None]] = [
    # limits, prompt, completion, cost, used tokens on settle (None: keep reserved)
    (BudgetConfig(max_tokens=100), 10, 50, 0.0, 15),
    (BudgetConfig(max_tokens=100), 10, 50, 0.0, None),
    (BudgetConfig(max_tokens=100), 10, 50, 0.0, 30),
    (BudgetConfig(max_tokens=100), 10, 50, 0.0, 5),
    (BudgetConfig(max_tokens=100), 10, 50, 0.0, None),
    (BudgetConfig(max_cost_usd=1.0), 1, 1, 0.4, 2),
    (BudgetConfig(max_cost_usd=1.0), 1, 1, 0.4, None),
    (BudgetConfig(max_cost_usd=1.0), 1, 1, 0.4, 2),
    (BudgetConfig(requests_per_minute=2), 1, 1, 0.0, 2),
    (BudgetConfig(requests_per_minute=2), 1, 1, 0.0, 2),
    (BudgetConfig(requests_per_minute=2), 1, 1, 0.0, 2),
    (BudgetConfig(tokens_per_minute=100), 30, 30, 0.0, 10),
    (BudgetConfig(tokens_per_minute=100), 30, 30, 0.0, None),
    (BudgetConfig(tokens_per_minute=100), 30, 30, 0.0, None),
    # spent (final) as against held by requests in flight (retry), both budgets
    (BudgetConfig(max_tokens=20), 10, 50, 0.0, 20),
    (BudgetConfig(max_tokens=20), 10, 50, 0.0, 20),
    (BudgetConfig(max_cost_usd=0.5), 1, 1, 0.25, 2),
    (BudgetConfig(max_cost_usd=0.5), 1, 1, 0.375, 2),  # asks 0.375 with 0.25 left
    (BudgetConfig(max_cost_usd=0.5), 1, 1, 0.25, 2),
    (BudgetConfig(max_cost_usd=0.5), 1, 1, 0.25, 2),  # spent
]


def _outcome(result: Reservation | GatewayError) -> tuple[str, int | str | None]:
    if isinstance(result, GatewayError):
        return type(result).__name__, result.message
    return "ok", result.completion_cap


@pytest.mark.asyncio
async def test_lua_budget_decides_as_the_local_one(link: RedisLink) -> None:
    local, shared = Budgets(), RedisBudgets(link, Budgets())
    seen: list[tuple[tuple[str, int | str | None], tuple[str, int | str | None]]] = []
    for i, (limits, prompt, completion, cost, used) in enumerate(STEPS):
        key = f"k{limits.model_dump_json()}"  # one key per kind of limit, as in STEPS
        results: list[Reservation | GatewayError] = []
        for backend in (local, shared):
            try:
                got = await backend.acquire(key, "t", limits, prompt, completion, cost)
                if used is not None:
                    await backend.settle(got, Usage(prompt, used - prompt), cost)
                results.append(got)
            except (BudgetExhausted, RateLimited) as exc:
                results.append(exc)
        seen.append((_outcome(results[0]), _outcome(results[1])))
        assert seen[-1][0] == seen[-1][1], f"step {i}: {seen}"
    kinds = {outcome[0] for outcome, _ in seen}
    assert kinds == {"ok", "BudgetExhausted", "BudgetHeld", "RateLimited"}  # every rule ran
    messages = [str(outcome[1]) for outcome, _ in seen]
    assert sum("exhausted" in m for m in messages) == 2
    assert (
        sum(
            "but 0.250000 USD of the cost budget" in m and "fewer max_tokens" in m for m in messages
        )
        == 1
    )


@pytest.mark.asyncio
async def test_settlement_charges_usage_and_frees_the_reservation(
    link: RedisLink, redis_server: RedisServer
) -> None:
    budgets = RedisBudgets(link, Budgets())
    limits = BudgetConfig(max_tokens=1000, max_cost_usd=5.0)
    held = await budgets.acquire("key", "tenant", limits, 10, 90, 0.25)
    await budgets.settle(held, Usage(10, 20), 0.125)
    await budgets.settle(held, Usage(10, 20), 0.125)  # idempotent
    await budgets.drain()  # sent behind the answer
    (name,) = redis_server.cli("--scan", "--pattern", "spectra:ai:*:budget:key").split()
    figures = dict(zip(*[iter(redis_server.cli("HGETALL", name).split())] * 2, strict=True))
    assert int(figures["used_tokens"]) == 30 and int(figures["reserved_tokens"]) == 0
    assert float(figures["used_cost"]) == pytest.approx(0.125)
    assert float(figures["reserved_cost"]) == pytest.approx(0.0)
    headers = budgets.rate_headers("key", BudgetConfig(requests_per_minute=5))
    assert headers["x-ratelimit-remaining-requests"] == "4"


def test_a_key_without_limits_never_touches_the_store() -> None:
    assert _unlimited(BudgetConfig())
    for field in BudgetConfig.model_fields:  # a new limit must be known to _unlimited
        assert not _unlimited(BudgetConfig.model_validate({field: 1})), field


@pytest.mark.asyncio
async def test_the_rate_window_expires_seconds_once_and_counts_the_rest(
    link: RedisLink, redis_server: RedisServer
) -> None:
    """Seconds that left the window are dropped (fields and running sums) by the next
    reservation, those still in it count; a window whose newest second left goes whole."""
    budgets = RedisBudgets(link, Budgets())
    rate = link.key("t", "rate", "k")
    now = int(redis_server.cli("TIME").split()[0])
    old, live = now - 100, now - 30
    redis_server.cli(
        "HSET", rate, f"r:{old}", "5", f"t:{old}", "500", f"r:{live}", "2", f"t:{live}", "200",
        "R", "7", "T", "700", "lo", str(old), "hi", str(live),
    )  # fmt: skip
    limits = BudgetConfig(requests_per_minute=3, tokens_per_minute=1_000)
    got = await budgets.acquire("k", "t", limits, 10, 40, 0.0)  # 2 + 1 < 3: passes
    assert got.tokens == 50
    headers = budgets.rate_headers("k", limits)
    assert headers["x-ratelimit-remaining-requests"] == "0"  # 3 of 3 in the window
    assert headers["x-ratelimit-remaining-tokens"] == str(1_000 - 200 - 50)
    fields = dict(zip(*[iter(redis_server.cli("HGETALL", rate).split())] * 2, strict=True))
    assert f"r:{old}" not in fields and f"t:{old}" not in fields
    assert (fields["R"], fields["T"], fields["lo"]) == ("3", "250", str(live))
    with pytest.raises(RateLimited) as refused:  # the live second still counts
        await budgets.acquire("k", "t", limits, 10, 40, 0.0)
    assert 28 <= refused.value.retry_after <= 32  # until `live` leaves the window
    redis_server.cli("HSET", rate, "hi", str(old), "lo", str(old))  # all of it left
    await budgets.acquire("k", "t", limits, 10, 40, 0.0)
    fields = dict(zip(*[iter(redis_server.cli("HGETALL", rate).split())] * 2, strict=True))
    assert (fields["R"], fields["T"]) == ("1", "50") and f"r:{live}" not in fields


@pytest.mark.asyncio
async def test_keys_of_one_tenant_share_a_hash_slot(link: RedisLink) -> None:
    budget, window = link.key("acme", "budget", "k1"), link.key("acme", "rate", "k1")
    tag = budget[budget.index("{") : budget.index("}") + 1]
    assert tag in window and tag not in link.key("other", "budget", "k1")
    assert link.key("we{ird}", "cache", "x").count("{") == 1  # a tenant cannot break the tag


# --- the shared exact cache -----------------------------------------------------------


@pytest.mark.asyncio
async def test_cache_ttl_bound_and_tenants(link: RedisLink) -> None:
    cache = RedisExactCache(link, ExactCacheConfig(ttl_s=0.3, max_entries=3))
    for i in range(5):
        await cache.put(f"k{i}", "ta", {"choices": [i]})
        await cache.drain()  # in this order (writes behind answers may overtake each other)
    assert [await cache.get(f"k{i}", "ta") is not None for i in range(5)] == [
        False,
        False,
        True,
        True,
        True,
    ]
    assert await cache.get("k4", "tb") is None  # another tenant's partition
    await asyncio.sleep(0.4)
    assert await cache.get("k4", "ta") is None  # expired


@pytest.mark.asyncio
async def test_singleflight_lock_waits_for_the_leader(link: RedisLink) -> None:
    first = RedisExactCache(link, ExactCacheConfig())
    second = RedisExactCache(link, ExactCacheConfig())
    assert await first.coalesce("q", "ta") is None  # leads
    waiting = asyncio.create_task(second.coalesce("q", "ta"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await first.put("q", "ta", {"choices": ["answer"]})
    await first.drain()  # sent behind the answer
    assert not await link.client.exists(link.key("ta", "flight", "q"))  # put released it
    await first.release("q", "ta")  # nothing left to release
    assert await asyncio.wait_for(waiting, 2) == {"choices": ["answer"]}
    # the entry stored between a miss and taking the lock is read with the lock
    await first.put("s", "ta", {"choices": ["late"]})
    await first.drain()  # stored (another instance's read does not wait for it)
    assert await second.coalesce("s", "ta") == {"choices": ["late"]}
    assert not await link.client.exists(link.key("ta", "flight", "s"))
    # a leader that fails (stores nothing) lets the waiter go alone
    assert await first.coalesce("r", "ta") is None
    waiting = asyncio.create_task(second.coalesce("r", "ta"))
    await asyncio.sleep(0.05)
    await first.release("r", "ta")
    assert await asyncio.wait_for(waiting, 2) is None


@pytest.mark.asyncio
async def test_lookup_takes_the_lock_on_a_miss_in_the_same_round_trip(link: RedisLink) -> None:
    first = RedisExactCache(link, ExactCacheConfig())
    second = RedisExactCache(link, ExactCacheConfig())
    lock = link.key("ta", "flight", "q")
    assert await first.lookup("q", "ta") == (None, True)  # missed, and leads
    assert await link.client.exists(lock)
    assert await second.lookup("q", "ta") == (None, False)  # held: no lock for the second
    waiting = asyncio.create_task(second.coalesce("q", "ta"))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # another instance waits for the leader's write
    await first.put("q", "ta", {"choices": ["answer"]})  # the lock passes to the write
    await first.release("q", "ta")  # nothing left: the write releases it once stored
    assert await asyncio.wait_for(waiting, 2) == {"choices": ["answer"]}
    await first.drain()
    assert not await link.client.exists(lock)
    # an entry is a hit and takes nothing; another tenant's partition is a miss (and leads)
    assert await second.lookup("q", "ta") == ({"choices": ["answer"]}, False)
    assert await second.lookup("q", "tb") == (None, True)
    await second.release("q", "tb")
    assert not await link.client.exists(link.key("tb", "flight", "q"))


# --- TLS and an ACL user, as ElastiCache presents them --------------------------------


@pytest.mark.asyncio
async def test_tls_and_acl_user(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "localhost")
    server = RedisServer(tmp_path, tls=(cert, key), user=("gateway", "s3cret-token"))
    server.start()
    try:
        config = {"host": "localhost", "port": server.port, "tls": True, "tls_ca_file": cert}
        good = RedisLink(
            _config(**config, username="gateway", password={"env": "PW"}), {"PW": "s3cret-token"}
        )
        await good.open()
        cache = RedisExactCache(good, ExactCacheConfig())
        await cache.put("k", "t", {"choices": []})
        assert await cache.get("k", "t") == {"choices": []} and good.available
        await good.close()
        bad = RedisLink(_config(**config, username="gateway", password={"env": "PW"}), {"PW": "x"})
        await bad.open()
        assert not bad.available and "Authentication" in (bad.last_error or "")
        await bad.close()
    finally:
        server.kill()


# --- the link: stance, fail fast, reconnect ---------------------------------------------


@pytest.mark.asyncio
async def test_down_store_stance_fail_fast_and_reconnect(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # not started yet: the port is closed
    closed = RedisLink(_config(server.port, op_timeout_s=0.2), {})
    local = RedisLink(
        _config(server.port, on_unavailable={"budgets": "local", "cache": "reject"}), {}
    )
    await closed.open()
    await local.open()
    try:
        assert not closed.available
        limits = BudgetConfig(max_tokens=100)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await RedisBudgets(closed, Budgets()).acquire("k", "t", limits, 1, 1, 0.0)
        assert time.monotonic() - started < 0.2  # refused at once between retries
        assert await RedisExactCache(closed, ExactCacheConfig()).get("k", "t") is None
        fallback = RedisBudgets(local, Budgets())
        held = await fallback.acquire("k", "t", limits, 10, 50, 0.0)
        assert not held.shared and held.completion_cap == 50
        with pytest.raises(StoreUnavailable):
            await RedisExactCache(local, ExactCacheConfig()).get("k", "t")
        server.start()
        deadline = time.monotonic() + 5
        while not closed.available and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert closed.available, closed.status()  # the probe reconnected, no traffic needed
        assert closed.status()["failures"] >= 2
        reserved = await RedisBudgets(closed, Budgets()).acquire("k", "t", limits, 1, 1, 0.0)
        assert reserved.shared
    finally:
        await closed.close()
        await local.close()
        server.kill()


@pytest.mark.asyncio
async def test_failed_settlements_are_replayed(redis_server: RedisServer) -> None:
    link = RedisLink(_config(redis_server.port), {})
    await link.open()
    budgets = RedisBudgets(link, Budgets())
    try:
        limits = BudgetConfig(max_tokens=10_000)
        held = await budgets.acquire("k", "t", limits, 10, 40, 0.0)
        more = [budgets.acquire("k", "t", limits, 1, 1, 0.0) for _ in range(10)]
        await asyncio.gather(*more)  # several pooled connections, all dead after the kill
        redis_server.kill()
        await budgets.settle(held, Usage(10, 5), 0.0)
        await budgets.drain()
        assert budgets.pending == 1
        redis_server.start()  # empty again: the replay only has to arrive
        deadline = time.monotonic() + 5
        while budgets.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert budgets.pending == 0
        (name,) = redis_server.cli("--scan", "--pattern", "spectra:ai:*:budget:k").split()
        assert redis_server.cli("HGET", name, "used_tokens") == "15"
        # the pooled connections that died with the old server are replaced, not failed
        again = [budgets.acquire("k", "t", limits, 1, 1, 0.0) for _ in range(10)]
        assert all(r.shared for r in await asyncio.gather(*again))
        assert link.available
    finally:
        await link.close()


@pytest.mark.asyncio
async def test_writes_sent_behind_the_answer_that_time_out_are_kept(
    redis_server: RedisServer,
) -> None:
    """A settlement and a cache write already on the wire (no task) when the store stops
    answering: the settlement waits for the replay, the cache write is dropped, nothing
    raises, and both features work again once the store answers."""
    link = RedisLink(_config(redis_server.port, op_timeout_s=0.2), {})
    await link.open()
    budgets = RedisBudgets(link, Budgets())
    cache = RedisExactCache(link, ExactCacheConfig())
    try:
        limits = BudgetConfig(max_tokens=10_000)
        held = await budgets.acquire("k", "t", limits, 10, 40, 0.0)
        redis_server.cli("CLIENT", "PAUSE", "700", "ALL")
        await budgets.settle(held, Usage(10, 5), 0.0)
        await cache.put("entry", "t", {"answer": 1})
        assert link.available  # both sent at once on the open connection
        await budgets.drain()
        await cache.drain()
        assert budgets.pending == 1 and not link.available
        deadline = time.monotonic() + 5
        while budgets.pending and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert budgets.pending == 0 and link.available
        (name,) = redis_server.cli("--scan", "--pattern", "spectra:ai:*:budget:k").split()
        assert redis_server.cli("HGET", name, "used_tokens") == "15"
        assert redis_server.cli("HGET", name, "reserved_tokens") == "0"
        await cache.put("entry", "t", {"answer": 2})
        await cache.drain()
        assert await cache.get("entry", "t") == {"answer": 2}
    finally:
        await link.close()


# --- configuration ----------------------------------------------------------------------


def test_redis_backend_needs_its_endpoint_and_names_the_field() -> None:
    with pytest.raises(ValidationError, match=r"state\.redis"):
        AIConfig.model_validate({"state": {"backend": "redis"}})
    with pytest.raises(ValidationError) as bad:
        AIConfig.model_validate({"state": {"backend": "memcached"}})
    assert bad.value.errors()[0]["loc"] == ("state", "backend")
    assert "'local' or 'redis'" in bad.value.errors()[0]["msg"]
    with pytest.raises(ValidationError) as stance:
        RedisConfig.model_validate({"host": "h", "on_unavailable": {"budgets": "open"}})
    assert stance.value.errors()[0]["loc"] == ("on_unavailable", "budgets")


def test_state_backend_option_overrides_the_document(tmp_path: Path) -> None:
    path = tmp_path / "ai.json"
    port = free_port()
    path.write_text(json.dumps({"ai": {"state": {"redis": {"host": "127.0.0.1", "port": port}}}}))
    assert load_config(path).state.backend == "local"
    config = load_config(path, "redis")
    assert isinstance(state_backend(config, {}), RedisBackend)
    (tmp_path / "bare.json").write_text("{}")
    with pytest.raises(ValidationError, match=r"state\.redis"):
        load_config(tmp_path / "bare.json", "redis")


@pytest.mark.asyncio
async def test_a_cancelled_retry_does_not_wedge_the_link(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    link = RedisLink(_config(server.port, op_timeout_s=5.0), {})
    await link.open()
    try:
        assert not link.available
        await asyncio.sleep(0.15)  # past the first retry time

        async def hang() -> None:
            await asyncio.sleep(60)

        retry = asyncio.create_task(link.call(hang, "hang"))  # the one call that retries
        await asyncio.sleep(0.05)
        with pytest.raises(StoreUnavailable):  # others are refused meanwhile
            await link.call(lambda: link.client.ping(), "ping")
        retry.cancel()  # the client went away
        server.start()
        deadline = time.monotonic() + 5
        while not link.available and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert link.available
    finally:
        await link.close()
        server.kill()
