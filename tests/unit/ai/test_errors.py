"""Bad input gets OpenAI-shaped errors with the right status, and is audited."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import anthropic
import openai
import pytest
from aiohttp.test_utils import TestServer

from ai.audit import verify
from tests.unit.ai.conftest import (
    KEY_A,
    KEY_B,
    KEY_REVOKED,
    GatewayFactory,
    audit_records,
    client_for,
)

MSG = [{"role": "user", "content": "hi"}]


async def raw_post(
    server: TestServer, body: bytes, key: str | None = KEY_A, path: str = "/v1/chat/completions"
) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(str(server.make_url(path)), data=body, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


@pytest.mark.asyncio
async def test_malformed_json_is_400(gateway: TestServer) -> None:
    status, body = await raw_post(gateway, b"{not json")
    assert status == 400
    error = body["error"]
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"
    assert "not valid JSON" in str(error["message"])


@pytest.mark.asyncio
async def test_unknown_field_is_400(gateway: TestServer) -> None:
    status, body = await raw_post(
        gateway, json.dumps({"model": "gpt-4o-mini", "messages": MSG, "temprature": 1}).encode()
    )
    assert status == 400
    assert body["error"]["param"] == "temprature"  # type: ignore[index]
    status, body = await raw_post(
        gateway,
        json.dumps(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x", "x": 1}]}
        ).encode(),
    )
    assert status == 400 and "messages.0.x" in str(body)


@pytest.mark.asyncio
async def test_oversized_body_is_413(make_gateway: GatewayFactory) -> None:
    server = await make_gateway(max_body_bytes=2048)
    status, body = await raw_post(
        server,
        json.dumps(
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 5000}]}
        ).encode(),
    )
    assert status == 413 and body["error"]["code"] == "request_too_large"  # type: ignore[index]


@pytest.mark.asyncio
async def test_keys(gateway: TestServer, tmp_path: Path) -> None:
    status, _ = await raw_post(gateway, b"{}", key=None)
    assert status == 401
    for key, exc in (
        ("sk-wrong", openai.AuthenticationError),
        (KEY_REVOKED, openai.PermissionDeniedError),
    ):
        async with client_for(gateway, key) as c:
            with pytest.raises(exc):
                await c.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    records = await audit_records(gateway)
    assert [r["status"] for r in records] == [401, 401, 403]
    assert records[1]["key_hash"] is None  # unknown key: nothing to name
    assert records[2]["key_id"] == "key-r" and records[2]["key_hash"]  # revoked: named
    assert verify(tmp_path / "audit.jsonl").ok


@pytest.mark.asyncio
async def test_unknown_model_is_404(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="mystery-1", messages=MSG)
    assert info.value.code == "model_not_found"


@pytest.mark.asyncio
async def test_exhausted_budget_is_429_and_audited(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    server = await make_gateway(budget_a={"max_tokens": 30})
    async with client_for(server) as c:
        with pytest.raises(openai.RateLimitError) as info:
            for i in range(20):
                await c.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": f"question {i}"}],
                    max_tokens=5,
                )
    assert info.value.code == "insufficient_quota"
    async with client_for(server, KEY_B) as c:  # other keys are unaffected
        await c.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
    assert (await audit_records(server))[-2]["status"] == 429


@pytest.mark.asyncio
async def test_rate_limit_requests_per_minute(make_gateway: GatewayFactory) -> None:
    server = await make_gateway(budget_a={"requests_per_minute": 3})
    async with client_for(server) as c:
        for i in range(3):
            await c.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"m{i}"}]
            )
        with pytest.raises(openai.RateLimitError) as info:
            await c.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert info.value.response.headers["Retry-After"].isdigit()


@pytest.mark.asyncio
async def test_upstream_secrets_never_leak(
    client: openai.AsyncOpenAI,
    gateway: TestServer,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    for model in ("gpt-fail500", "claude-fail500", "bedrock/x-fail500"):
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model=model, messages=MSG)
        assert info.value.status_code == 502
        assert "SECRET" not in info.value.response.text
    text = caplog.text + json.dumps(await audit_records(gateway))
    assert "SECRET" not in text and "AKIAFAKE" not in text


@pytest.mark.asyncio
async def test_upstream_429_passes_as_429(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-fail429", messages=MSG)


@pytest.mark.asyncio
@pytest.mark.parametrize("model", ["gpt-fail429", "claude-fail429", "bedrock/x-fail429"])
async def test_upstream_rate_limit_carries_retry_after(gateway: TestServer, model: str) -> None:
    # Bedrock's ThrottlingException comes without Retry-After; the client still gets one.
    async with client_for(gateway) as c:
        with pytest.raises(openai.RateLimitError) as info:
            await c.chat.completions.create(model=model, messages=MSG)
    assert int(info.value.response.headers["Retry-After"]) >= 1


@pytest.mark.asyncio
async def test_token_rate_limit_carries_retry_after(make_gateway: GatewayFactory) -> None:
    server = await make_gateway(budget_a={"tokens_per_minute": 60})
    async with client_for(server) as c:
        await c.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=20)
        with pytest.raises(openai.RateLimitError) as info:
            await c.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=59)
    assert 1 <= int(info.value.response.headers["Retry-After"]) <= 61


@pytest.mark.asyncio
async def test_exhausted_budget_is_not_retried_by_the_sdks(make_gateway: GatewayFactory) -> None:
    """A lifetime budget does not refill: its 429 says ``x-should-retry: false``, so the
    openai and anthropic SDKs (which retry every other 429) ask once, not three times."""
    server = await make_gateway(budget_a={"max_tokens": 1}, exact_cache={"enabled": False})
    base = str(server.make_url("")).rstrip("/")
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key=KEY_A, max_retries=2) as c:
        with pytest.raises(openai.RateLimitError) as info:
            await c.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5)
    assert info.value.response.headers["x-should-retry"] == "false"
    assert "Retry-After" not in info.value.response.headers
    async with anthropic.AsyncAnthropic(base_url=base, api_key=KEY_A, max_retries=2) as a:
        with pytest.raises(anthropic.RateLimitError):
            await a.messages.create(model="gpt-4o-mini", max_tokens=5, messages=MSG)  # type: ignore[arg-type]
    assert [r["status"] for r in await audit_records(server)] == [429, 429]
