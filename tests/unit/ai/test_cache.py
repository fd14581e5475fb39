"""Exact cache: shared by stream and non-stream, complete responses only, TTL, bound,
single-flight, and tenant partitioning under 10,000 mixed requests."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

from ai.cache import ExactCache
from ai.canonical import exact_key, resolved_request
from ai.config import ExactCacheConfig
from tests.unit.ai.conftest import KEY_A, KEY_B, Fakes, GatewayFactory, audit_records

MSG = [{"role": "user", "content": "cache me"}]


def test_key_ignores_volatile_fields_and_includes_tenant() -> None:
    body = {"model": "gpt-x", "messages": MSG, "temperature": 0.2}
    noisy = {**body, "stream": True, "stream_options": {"include_usage": True}, "user": "u1"}
    assert resolved_request(body, "gpt-x") == resolved_request(noisy, "gpt-x")
    key = exact_key("a", "openai", resolved_request(body, "gpt-x"))
    assert key == exact_key("a", "openai", resolved_request(noisy, "gpt-x"))
    assert key != exact_key("b", "openai", resolved_request(body, "gpt-x"))
    assert key != exact_key("a", "openai", resolved_request({**body, "temperature": 0.3}, "gpt-x"))


@pytest.mark.asyncio
async def test_sqlite_ttl_bound_and_tenant_check(tmp_path: Path) -> None:
    cache = ExactCache(ExactCacheConfig(path=tmp_path / "c.db", ttl_s=0.2, max_entries=5))
    await cache.open()
    try:
        for i in range(8):
            await cache.put(f"k{i}", "t", {"i": i})
        assert await cache.get("k7", "t") == {"i": 7}  # queued, read from the queue
        await cache.flush()
        assert len(cache) == 5
        assert await cache.get("k0", "t") is None and await cache.get("k7", "t") == {"i": 7}
        assert await cache.get("k7", "other-tenant") is None
        await asyncio.sleep(0.3)
        assert await cache.get("k7", "t") is None
    finally:
        await cache.close()


@pytest.mark.asyncio
async def test_hit_shared_by_stream_and_non_stream(
    client: openai.AsyncOpenAI, fakes: Fakes, gateway: TestServer
) -> None:
    first = await client.chat.completions.create(model="claude-sonnet-4", messages=MSG)
    stream = await client.chat.completions.create(
        model="claude-sonnet-4", messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first.choices[0].message.content == "Echo: cache me"
    assert chunks[-1].usage is not None
    again = await client.chat.completions.create(model="claude-sonnet-4", messages=MSG)
    assert again.choices[0].message.content == "Echo: cache me"
    assert fakes.requests("anthropic") == 1
    outcomes = [r["cache"]["outcome"] for r in await audit_records(gateway)]
    assert outcomes == ["miss", "hit", "hit"]


@pytest.mark.asyncio
async def test_stream_first_then_non_stream_hit(client: openai.AsyncOpenAI, fakes: Fakes) -> None:
    stream = await client.chat.completions.create(model="bedrock/m", messages=MSG, stream=True)
    _ = [c async for c in stream]
    resp = await client.chat.completions.create(model="bedrock/m", messages=MSG)
    assert resp.choices[0].message.content == "Echo: cache me"
    assert fakes.requests("bedrock") == 1


@pytest.mark.asyncio
async def test_incomplete_responses_are_not_cached(
    client: openai.AsyncOpenAI, fakes: Fakes
) -> None:
    for _ in range(2):
        got = await client.chat.completions.create(
            model="gpt-failafter2", stream=True, messages=[{"role": "user", "content": "a b c d"}]
        )
        with pytest.raises(openai.APIError):
            _ = [c async for c in got]
    assert fakes.requests("openai") == 2


@pytest.mark.asyncio
async def test_concurrent_identical_requests_coalesce(
    client: openai.AsyncOpenAI, fakes: Fakes, gateway: TestServer
) -> None:
    async def one(stream: bool) -> str:
        if stream:
            got = await client.chat.completions.create(
                model="gpt-slow300", messages=MSG, stream=True
            )
            return "".join([c.choices[0].delta.content or "" async for c in got if c.choices])
        resp = await client.chat.completions.create(model="gpt-slow300", messages=MSG)
        return resp.choices[0].message.content or ""

    texts = await asyncio.gather(*(one(i % 2 == 0) for i in range(10)))
    assert set(texts) == {"Echo: cache me"}
    assert fakes.requests("openai") == 1
    outcomes = sorted(r["cache"]["outcome"] for r in await audit_records(gateway))
    assert outcomes == ["coalesced"] * 9 + ["miss"]


@pytest.mark.asyncio
async def test_tenant_b_never_gets_tenant_a_answers(
    make_gateway: GatewayFactory, fakes: Fakes
) -> None:
    """10,000 mixed requests; answers carry the asking tenant's marker in the prompt."""
    server = await make_gateway(audit={"path": None}, overflow={"max_concurrency": 64})
    url = str(server.make_url("/v1/chat/completions"))
    rng = random.Random(6)
    models = ["gpt-4o-mini", "claude-sonnet-4", "local/llama", "bedrock/m"]
    plan = [
        (rng.choice("AB"), rng.randrange(20), rng.choice(models), rng.random() < 0.3)
        for _ in range(10_000)
    ]
    leaks: list[tuple[str, str]] = []
    sem = asyncio.Semaphore(32)

    async def one(
        session: aiohttp.ClientSession, tenant: str, q: int, model: str, stream: bool
    ) -> None:
        key = KEY_A if tenant == "A" else KEY_B
        # Odd questions name the tenant (a leak shows in the text); even ones are the
        # same text for both tenants, so only the partition keeps them apart.
        body = {
            "model": model,
            "stream": stream,
            "messages": [
                {
                    "role": "user",
                    "content": f"question {q} from tenant {tenant}"
                    if q % 2
                    else f"shared question {q}",
                }
            ],
        }
        async with (
            sem,
            session.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as resp,
        ):
            text = await resp.text()
            assert resp.status == 200, text
        other = "B" if tenant == "A" else "A"
        if f"tenant {other}" in text:
            leaks.append((tenant, text))

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, *p) for p in plan))
    assert not leaks
    # Shared questions (same text for both tenants) would not show a leak in the text:
    # every distinct (tenant, question, model) must have cost exactly one upstream call.
    upstream = sum(fakes.requests(n) for n in ("openai", "anthropic", "local", "bedrock"))
    assert upstream == len({(t, q, m) for t, q, m, _ in plan})
