"""What the gateway keeps on disk: the exact cache and the budgets come back after a
restart (on both routes, stream and non-stream), and no secret -- upstream keys, AWS
keys, the key secret, a client's API key -- is in any file the gateway wrote (audit log,
exact cache, semantic store, budget state), nor in its logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai.server import GATEWAY
from tests.unit.ai.conftest import (
    ENV,
    KEY_A,
    SECRET,
    Fakes,
    GatewayFactory,
    audit_records,
    client_for,
)
from tests.unit.ai.test_messages import sdk

MODELS = ["gpt-4o-mini", "claude-sonnet-4", "bedrock/anthropic.claude", "local/llama"]
ASK = [{"role": "user", "content": "keep this answer for later"}]
SETTINGS = {"semantic_cache": {"settings": {}}, "budget_a": {"max_tokens": 100_000}}


@pytest.mark.asyncio
async def test_cache_and_budgets_survive_a_restart_and_no_secret_is_written(
    make_gateway: GatewayFactory,
    fakes: Fakes,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = await make_gateway(**SETTINGS)
    async with client_for(first) as c, sdk(first) as a:
        for model in MODELS:
            await c.chat.completions.create(model=model, messages=ASK)  # type: ignore[arg-type]
            await a.messages.create(model=model, max_tokens=64, messages=ASK)  # type: ignore[arg-type]
    used_before = first.app[GATEWAY].budgets.used("key-a")
    upstream = {name: fakes.requests(name) for name in ("openai", "anthropic", "bedrock", "local")}
    await first.close()

    second = await make_gateway(**SETTINGS)
    async with client_for(second) as c, sdk(second) as a:
        for model in MODELS:
            stream = await c.chat.completions.create(model=model, messages=ASK, stream=True)  # type: ignore[arg-type]
            assert [chunk async for chunk in stream]
            async with a.messages.stream(model=model, max_tokens=64, messages=ASK) as s:  # type: ignore[arg-type]
                assert (await s.get_final_message()).content
    assert {n: fakes.requests(n) for n in upstream} == upstream  # all from the cache
    assert second.app[GATEWAY].budgets.used("key-a") == used_before  # cache hits are free
    records = await audit_records(second)
    assert [r["cache"]["outcome"] for r in records[-8:]] == ["hit"] * 8
    await second.close()

    secrets = [v for k, v in ENV.items()] + [SECRET, KEY_A]
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert {p.name for p in written} >= {"audit.jsonl", "cache.sqlite3", "cache-semantic.sqlite3"}
    assert any("state" in p.name for p in written)
    for path in written:
        data = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in data, f"{path.name} holds a secret"
    for secret in secrets:
        assert secret not in caplog.text
