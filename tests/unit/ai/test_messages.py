"""``POST /v1/messages`` with the official anthropic SDK as the client: stream and
non-stream, tools both ways, system (as each upstream receives it), routing to any
provider, exact and semantic cache, audit, and errors in Anthropic's shape (auth,
budget, validation)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestServer

from ai.server import GATEWAY
from tests.fakes.behavior import STATS
from tests.unit.ai.conftest import KEY_A, KEY_B, KEY_REVOKED, Fakes, GatewayFactory, audit_records
from tests.unit.ai.test_semantic import FakeSemanticCache

TOOL = {"name": "look", "description": "look it up", "input_schema": {"type": "object"}}


def sdk(server: TestServer, key: str | None = KEY_A, **kwargs: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=str(server.make_url("")).rstrip("/"),
        api_key=key,
        max_retries=0,
        _strict_response_validation=True,
        **kwargs,
    )


@pytest_asyncio.fixture
async def client(gateway: TestServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with sdk(gateway) as c:
        yield c


# How each upstream received the Messages request's ``system``.
SYSTEM_SENT = {
    "gpt-4o-mini": ("openai", lambda b: b["messages"][0]),
    "claude-sonnet-4": ("anthropic", lambda b: b["system"]),
    "bedrock/anthropic.claude": ("bedrock", lambda b: b["system"]),
    "local/llama": ("local", lambda b: b["messages"][0]),
}
SYSTEM_WIRE = {
    "openai": {"role": "system", "content": "be brief"},
    "anthropic": "be brief",
    "bedrock": [{"text": "be brief"}],
    "local": {"role": "system", "content": "be brief"},
}


@pytest.mark.asyncio
@pytest.mark.parametrize("model", sorted(SYSTEM_SENT))
async def test_non_stream_any_provider(
    gateway: TestServer, client: anthropic.AsyncAnthropic, fakes: Fakes, model: str
) -> None:
    msg = await client.messages.create(
        model=model,
        max_tokens=64,
        system="be brief",
        messages=[{"role": "user", "content": "hello gateway"}],
    )
    assert msg.type == "message" and msg.role == "assistant" and msg.model == model
    assert msg.content[0].type == "text" and "hello gateway" in msg.content[0].text
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens > 0 and msg.usage.input_tokens > 0
    upstream, system = SYSTEM_SENT[model]
    assert system(fakes.app(upstream)[STATS]["bodies"][-1]) == SYSTEM_WIRE[upstream]
    records = await audit_records(gateway)
    assert records[-1]["endpoint"] == "messages" and records[-1]["commit"] == "completed"
    assert records[-1]["key_id"] == "key-a"


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True])
async def test_semantic_cache_on_the_messages_route(
    make_gateway: GatewayFactory, fakes: Fakes, stream: bool
) -> None:
    """The semantic cache serves /v1/messages too, within the key's tenant only."""
    server = await make_gateway(semcache=FakeSemanticCache())
    texts = []
    for key, content in (
        (KEY_A, "What is the capital of France?"),
        (KEY_A, "what is the capital of france"),
        (KEY_B, "what is the capital of france"),
    ):
        ask: dict[str, Any] = {
            "model": "claude-sonnet-4",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": content}],
        }
        async with sdk(server, key) as c:
            if stream:
                async with c.messages.stream(**ask) as s:
                    msg = await s.get_final_message()
            else:
                msg = await c.messages.create(**ask)
        assert msg.content[0].type == "text" and msg.stop_reason == "end_turn"
        texts.append(msg.content[0].text)
    assert texts[1] == texts[0] == "Echo: What is the capital of France?"
    assert texts[2] == "Echo: what is the capital of france"
    assert fakes.requests("anthropic") == 2
    records = await audit_records(server)
    assert [r["cache"]["outcome"] for r in records] == ["miss", "semantic_hit", "miss"]
    assert all(r["endpoint"] == "messages" for r in records)


@pytest.mark.asyncio
async def test_stream_events_and_cache_hit(
    gateway: TestServer, client: anthropic.AsyncAnthropic
) -> None:
    request: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "stream me please"}],
    }
    for expected_cache in ("miss", "hit"):
        names, text = [], []
        async with client.messages.stream(**request) as stream:
            async for ev in stream:
                names.append(ev.type)
                if ev.type == "content_block_delta" and ev.delta.type == "text_delta":
                    text.append(ev.delta.text)
            final = await stream.get_final_message()
        assert names[0] == "message_start" and names[-1] == "message_stop"
        for name in ("content_block_start", "content_block_delta", "message_delta"):
            assert name in names
        assert final.content[0].type == "text" and final.content[0].text == "".join(text)
        assert "stream me please" in final.content[0].text
        assert final.stop_reason == "end_turn" and final.usage.output_tokens > 0
        record = (await audit_records(gateway))[-1]
        assert record["cache"]["outcome"] == expected_cache and record["stream"] is True


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4"])
async def test_tools_both_ways(client: anthropic.AsyncAnthropic, stream: bool, model: str) -> None:
    ask: list[Any] = [{"role": "user", "content": "find cats"}]
    if stream:
        async with client.messages.stream(
            model=model, max_tokens=64, messages=ask, tools=[TOOL]
        ) as s:
            msg = await s.get_final_message()
    else:
        msg = await client.messages.create(model=model, max_tokens=64, messages=ask, tools=[TOOL])
    assert msg.stop_reason == "tool_use"
    use = msg.content[-1]
    assert use.type == "tool_use" and use.name == "look" and isinstance(use.input, dict)
    follow = await client.messages.create(
        model=model,
        max_tokens=64,
        tools=[TOOL],
        messages=[
            *ask,
            {"role": "assistant", "content": [b.model_dump() for b in msg.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "3 cats"}],
            },
        ],
    )
    assert follow.stop_reason == "end_turn" and follow.content[0].type == "text"


@pytest.mark.asyncio
async def test_auth_errors_in_anthropic_shape(gateway: TestServer) -> None:
    async with sdk(gateway, key="sk-unknown") as c:
        with pytest.raises(anthropic.AuthenticationError) as bad:
            await c.messages.create(
                model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "x"}]
            )
    assert bad.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid API key"},
    }
    async with sdk(gateway, key=KEY_REVOKED) as c:
        with pytest.raises(anthropic.PermissionDeniedError):
            await c.messages.create(
                model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "x"}]
            )
    # Authorization: Bearer works too (auth_token is the SDK's bearer option).
    async with sdk(gateway, key=None, auth_token=KEY_A) as c:
        msg = await c.messages.create(
            model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "bearer"}]
        )
    assert msg.content[0].type == "text"


@pytest.mark.asyncio
async def test_validation_error_names_the_field(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        await client.messages.create(
            model="gpt-4o-mini",
            max_tokens=8,
            messages=[{"role": "user", "content": [{"type": "document", "source": {}}]}],
        )
    error = bad.value.body["error"]  # type: ignore[index]
    assert error["type"] == "invalid_request_error"
    assert "messages.0.content.0.type" in error["message"] and "tool_result" in error["message"]


@pytest.mark.asyncio
async def test_budget_error(make_gateway: GatewayFactory) -> None:
    server = await make_gateway(budget_a={"max_tokens": 40}, exact_cache={"enabled": False})
    async with sdk(server) as c:
        with pytest.raises(anthropic.RateLimitError) as exhausted:
            for i in range(20):
                await c.messages.create(
                    model="gpt-4o-mini",
                    max_tokens=8,
                    messages=[{"role": "user", "content": f"spend tokens {i}"}],
                )
    assert exhausted.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert exhausted.value.response.status_code == 429
    used, _ = server.app[GATEWAY].budgets.used("key-a")
    assert 0 < used <= 40


@pytest.mark.asyncio
async def test_stream_cut_off_ends_with_error_event(
    gateway: TestServer, client: anthropic.AsyncAnthropic
) -> None:
    names: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as cut:
        async with client.messages.stream(
            model="gpt-truncate2",
            max_tokens=64,
            messages=[{"role": "user", "content": "one two three four five six"}],
        ) as stream:
            async for ev in stream:
                names.append(ev.type)
    assert "upstream_truncated" not in str(cut.value) and "incomplete" in str(cut.value)
    assert "message_start" in names and "message_stop" not in names
    record = (await audit_records(gateway))[-1]
    assert record["endpoint"] == "messages" and record["commit"] == "truncated"


@pytest.mark.asyncio
async def test_unsupported_argument_is_named(gateway: TestServer) -> None:
    async with sdk(gateway) as c:
        with pytest.raises(anthropic.BadRequestError) as bad:
            await c.messages.create(
                model="gpt-4o-mini",
                max_tokens=8,
                extra_body={"top_k": 5},
                messages=[{"role": "user", "content": "x"}],
            )
    error = bad.value.body["error"]  # type: ignore[index]
    assert error == {
        "type": "invalid_request_error",
        "message": "Unrecognized request argument supplied: top_k",
    }
