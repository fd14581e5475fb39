"""``/v1/messages`` protocol details, with the official anthropic SDK as the client: the
required ``anthropic-version`` header (missing or unknown -> 400 in Anthropic's shape
naming the header and the accepted values; 2026-10-21 refuses ``temperature`` as
Anthropic does), ``message_start`` carrying the prompt's input tokens, and the
request id and rate-limit headers the SDK reads."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest
from aiohttp.test_utils import TestServer

from ai.messages import ANTHROPIC_VERSIONS
from tests.unit.ai.conftest import KEY_A, GatewayFactory, audit_records
from tests.unit.ai.test_messages import sdk

ASK: dict[str, Any] = {
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "count my prompt tokens please"}],
}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("version", "says"),
    [(anthropic.Omit(), "header is required"), ("2024-02-30", "unknown version '2024-02-30'")],
)
async def test_version_header_required_and_known(
    gateway: TestServer, version: Any, says: str
) -> None:
    async with sdk(gateway, default_headers={"anthropic-version": version}) as client:
        with pytest.raises(anthropic.BadRequestError) as bad:
            await client.messages.create(model="gpt-4o-mini", **ASK)
    error = bad.value.body["error"]  # type: ignore[index]
    assert bad.value.response.status_code == 400
    assert error == {
        "type": "invalid_request_error",
        "message": f"anthropic-version: {says}; accepted values: {list(ANTHROPIC_VERSIONS)}",
    }
    record = (await audit_records(gateway))[-1]
    assert record["endpoint"] == "messages" and record["status"] == 400
    assert record["key_id"] == "key-a"


@pytest.mark.asyncio
@pytest.mark.parametrize("version", ANTHROPIC_VERSIONS)
async def test_known_versions_are_served(gateway: TestServer, version: str) -> None:
    async with sdk(gateway, default_headers={"anthropic-version": version}) as client:
        msg = await client.messages.create(model="claude-sonnet-4", **ASK)
    assert msg.stop_reason == "end_turn" and msg.content[0].type == "text"


@pytest.mark.asyncio
@pytest.mark.parametrize("field", ["temperature", "top_p"])
async def test_version_2026_refuses_sampling_fields(gateway: TestServer, field: str) -> None:
    async with sdk(gateway, default_headers={"anthropic-version": "2026-10-21"}) as client:
        with pytest.raises(anthropic.BadRequestError) as bad:
            await client.messages.create(model="gpt-4o-mini", extra_body={field: 0.5}, **ASK)
    message = bad.value.body["error"]["message"]  # type: ignore[index]
    assert message.startswith(f"{field}: not accepted with anthropic-version 2026-10-21")
    async with sdk(gateway, default_headers={"anthropic-version": "2023-06-01"}) as client:
        msg = await client.messages.create(model="gpt-4o-mini", extra_body={field: 0.5}, **ASK)
    assert msg.content[0].type == "text"


async def _start_and_final(client: anthropic.AsyncAnthropic, model: str) -> tuple[int, Any]:
    async with client.messages.stream(model=model, **ASK) as stream:
        starts = [ev.message.usage async for ev in stream if ev.type == "message_start"]
        final = await stream.get_final_message()
    assert len(starts) == 1
    return starts[0].input_tokens, final


@pytest.mark.asyncio
async def test_message_start_carries_upstream_input_tokens(gateway: TestServer) -> None:
    """Anthropic's upstream counts the prompt in its own message_start: passed on."""
    async with sdk(gateway) as client:
        started, final = await _start_and_final(client, "claude-sonnet-4")
    assert started > 0 and started == final.usage.input_tokens


@pytest.mark.asyncio
async def test_message_start_carries_estimate_then_cached_count(gateway: TestServer) -> None:
    """An OpenAI upstream counts the prompt only at the end: message_start carries the
    gateway's estimate; a cache hit replays the stored count, as its final usage does."""
    async with sdk(gateway) as client:
        started, final = await _start_and_final(client, "gpt-4o-mini")
        assert started > 0 and final.usage.input_tokens > 0
        replayed, again = await _start_and_final(client, "gpt-4o-mini")
    assert replayed == again.usage.input_tokens == final.usage.input_tokens
    records = await audit_records(gateway)
    assert [r["cache"]["outcome"] for r in records[-2:]] == ["miss", "hit"]


@pytest.mark.asyncio
async def test_request_id_and_rate_limit_headers(make_gateway: GatewayFactory) -> None:
    """The anthropic SDK's request id (``request-id``) names the audit record, errors
    included; a rate-limit 429 carries Retry-After and OpenAI's x-ratelimit-* headers."""
    server = await make_gateway(budget_a={"requests_per_minute": 2})
    async with sdk(server) as client:
        first = await client.messages.create(model="gpt-4o-mini", **ASK)
        async with client.messages.stream(model="claude-sonnet-4", **ASK) as stream:
            await stream.get_final_message()
            streamed = stream.request_id
        with pytest.raises(anthropic.RateLimitError) as limited:
            await client.messages.create(model="gpt-4o-mini", **ASK)
    records = await audit_records(server)
    sent = [first._request_id, streamed, limited.value.request_id]
    assert sent == [r["request_id"] for r in records] and len(set(sent)) == 3
    headers = limited.value.response.headers
    assert int(headers["Retry-After"]) >= 1
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


@pytest.mark.asyncio
async def test_x_api_key_header(gateway: TestServer) -> None:
    """The 2.x SDK sends its api_key as ``Authorization: Bearer``; older SDKs and curl
    send ``x-api-key``, which works the same (and an unknown one is 401)."""
    async with sdk(gateway, key=None, default_headers={"x-api-key": KEY_A}) as client:
        msg = await client.messages.create(model="gpt-4o-mini", **ASK)
    assert msg.content[0].type == "text"
    async with sdk(gateway, key=None, default_headers={"x-api-key": "sk-nope"}) as client:
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.create(model="gpt-4o-mini", **ASK)
    records = await audit_records(gateway)
    assert [(r["status"], r["key_id"]) for r in records] == [(200, "key-a"), (401, None)]
