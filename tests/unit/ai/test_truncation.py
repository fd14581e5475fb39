"""Completeness is checked, never assumed: an upstream answer that ends cleanly but
without a finish reason (and, streamed, without its terminator: OpenAI's ``[DONE]``,
Anthropic's ``message_stop``, Bedrock's ``messageStop``) reaches the client as an error,
is audited as truncated and is never cached, exactly or semantically; a finish reason
without the terminator is cut off too; the same on the Messages route (anthropic SDK)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from aiohttp.test_utils import TestServer

from ai.server import GATEWAY
from tests.unit.ai.conftest import KEY_A, Fakes, GatewayFactory, audit_records, client_for
from tests.unit.ai.test_messages import sdk
from tests.unit.ai.test_semantic import FakeSemanticCache

# (model, fake upstream); the fake stops cleanly after 3 of 7 tokens.
CUT = [
    ("gpt-truncate3", "openai"),
    ("claude-truncate3", "anthropic"),
    ("bedrock/truncate3", "bedrock"),
    ("local/truncate3", "local"),
]
PROMPT = "one two three four five six"
PROVIDER = {"openai": "openai", "anthropic": "anthropic", "bedrock": "bedrock", "local": "vllm"}


async def _sse(server: TestServer, model: str) -> list[str]:
    """The data lines of a streamed answer, as sent."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": PROMPT}]}
    headers = {"Authorization": f"Bearer {KEY_A}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            str(server.make_url("/v1/chat/completions")), json=body, headers=headers
        ) as resp,
    ):
        assert resp.status == 200
        text = await resp.text()
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


@pytest.mark.asyncio
@pytest.mark.parametrize(("model", "upstream"), CUT)
async def test_cut_stream_ends_in_error_without_done(
    make_gateway: GatewayFactory, fakes: Fakes, model: str, upstream: str
) -> None:
    sem = FakeSemanticCache()
    server = await make_gateway(semcache=sem)
    for attempt in (1, 2):
        data = await _sse(server, model)
        assert "[DONE]" not in data
        events = [json.loads(d) for d in data]
        text = "".join(
            c["delta"].get("content") or "" for e in events for c in e.get("choices", [])
        )
        assert text == "Echo: one two"
        assert all(c["finish_reason"] is None for e in events for c in e.get("choices", []))
        error = events[-1]["error"]
        assert error["code"] == "upstream_truncated"
        assert fakes.requests(upstream) == attempt  # never served from a cache
    assert sem.entries == {}
    records = await audit_records(server)
    assert [r["commit"] for r in records] == ["truncated", "truncated"]
    assert all(r["error"]["upstream"]["kind"] == "truncated" for r in records)


@pytest.mark.asyncio
@pytest.mark.parametrize(("model", "upstream"), CUT)
async def test_cut_answer_is_502_and_never_cached(
    make_gateway: GatewayFactory, fakes: Fakes, model: str, upstream: str
) -> None:
    sem = FakeSemanticCache()
    server = await make_gateway(semcache=sem, overflow={"policy": "reject"})
    async with client_for(server) as client:
        for attempt in (1, 2):
            with pytest.raises(openai.APIStatusError) as caught:
                await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": PROMPT}]
                )
            assert caught.value.status_code == 502
            assert "incomplete" in caught.value.message
            assert f"upstream provider {PROVIDER[upstream]} " in caught.value.message
            assert fakes.requests(upstream) == attempt
    assert sem.entries == {}
    records = await audit_records(server)
    assert [r["status"] for r in records] == [502, 502]
    assert [r["commit"] for r in records] == ["truncated", "truncated"]


@pytest.mark.asyncio
async def test_complete_answers_still_cached(make_gateway: GatewayFactory, fakes: Fakes) -> None:
    # The control: the same prompt to an upstream that finishes is cached and replayed.
    server = await make_gateway()
    async with client_for(server) as client:
        for _ in (1, 2):
            out = await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}]
            )
            assert out.choices[0].finish_reason == "stop"
    assert fakes.requests("openai") == 1


@pytest.mark.asyncio
@pytest.mark.parametrize(("model", "upstream"), CUT)
async def test_cut_answer_is_still_charged(
    make_gateway: GatewayFactory, model: str, upstream: str
) -> None:
    # The upstream was paid for the partial answer: the key's budget is charged with it.
    server = await make_gateway(budget_a={"max_tokens": 100_000}, overflow={"policy": "reject"})
    async with client_for(server) as client:
        with pytest.raises(openai.APIStatusError):
            await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": PROMPT}]
            )
    used, _ = server.app[GATEWAY].budgets.used("key-a")
    records = await audit_records(server)
    assert records[-1]["commit"] == "truncated"
    usage = records[-1]["usage"]
    assert used == usage["prompt"] + usage["completion"] and usage["completion"] > 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("model", "upstream"),
    [
        ("gpt-noterminator", "openai"),
        ("claude-noterminator", "anthropic"),
        ("bedrock/noterminator", "bedrock"),  # messageStop without the final metadata
        ("local/noterminator", "local"),
    ],
)
async def test_finish_reason_without_terminator_is_truncated(
    make_gateway: GatewayFactory, fakes: Fakes, model: str, upstream: str
) -> None:
    """A finish reason alone is not enough: the stream must also end with its terminator
    (``[DONE]``, ``message_stop``, Bedrock's ``metadata`` after ``messageStop``); without
    it the answer is cut off, never cached."""
    server = await make_gateway(semcache=(sem := FakeSemanticCache()))
    for attempt in (1, 2):
        data = await _sse(server, model)
        assert "[DONE]" not in data
        assert json.loads(data[-1])["error"]["code"] == "upstream_truncated"
        assert fakes.requests(upstream) == attempt
    assert sem.entries == {}
    records = await audit_records(server)
    assert [r["commit"] for r in records] == ["truncated", "truncated"]


async def _messages(client: anthropic.AsyncAnthropic, model: str, stream: bool) -> list[str]:
    """The event types the anthropic SDK saw before the error it raises."""
    seen: list[str] = []
    ask: dict[str, Any] = {
        "model": model,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": PROMPT}],
    }
    if not stream:
        await client.messages.create(**ask)
        return seen
    async with client.messages.stream(**ask) as events:
        async for event in events:
            seen.append(event.type)
    return seen


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("model", "upstream"), CUT)
async def test_cut_answer_on_the_messages_route(
    make_gateway: GatewayFactory, fakes: Fakes, model: str, upstream: str, stream: bool
) -> None:
    """Through the anthropic SDK: a cut-off upstream (any wire format) is a 502 in
    Anthropic's shape, or an ``error`` event with no ``message_stop``; never cached."""
    server = await make_gateway(overflow={"policy": "reject"})
    async with sdk(server) as client:
        for attempt in (1, 2):
            with pytest.raises(anthropic.APIStatusError) as caught:
                seen = await _messages(client, model, stream)
                pytest.fail(f"no error after {seen}")
            assert "incomplete" in caught.value.message
            if not stream:
                assert caught.value.status_code == 502
                assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]
            assert fakes.requests(upstream) == attempt
    records = await audit_records(server)
    assert [r["commit"] for r in records] == ["truncated", "truncated"]
    assert all(r["endpoint"] == "messages" for r in records)


NO_REASON = [
    ("gpt-nostopreason", "openai"),
    ("claude-nostopreason", "anthropic"),
    ("bedrock/nostopreason", "bedrock"),
    ("local/nostopreason", "local"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("model", "upstream"), NO_REASON)
async def test_no_stop_reason_is_never_invented(
    make_gateway: GatewayFactory, fakes: Fakes, model: str, upstream: str
) -> None:
    """An upstream that ends with its terminator but names no finish / stop reason
    (``finish_reason: null`` then ``[DONE]``; ``message_delta`` with ``stop_reason:
    null`` then ``message_stop``; ``messageStop`` without ``stopReason`` then
    ``metadata``): the gateway does not make one up. Stream: in-band error, no
    ``[DONE]``; non-stream: 502 naming the upstream; neither cached, both truncated."""
    sem = FakeSemanticCache()
    server = await make_gateway(semcache=sem, overflow={"policy": "reject"})
    data = await _sse(server, model)
    assert "[DONE]" not in data
    events = [json.loads(d) for d in data]
    assert all(c["finish_reason"] is None for e in events for c in e.get("choices", []))
    assert events[-1]["error"]["code"] == "upstream_truncated"
    async with client_for(server) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": PROMPT}]
            )
    assert caught.value.status_code == 502
    assert f"upstream provider {PROVIDER[upstream]} " in caught.value.message
    assert fakes.requests(upstream) == 2 and sem.entries == {}
    records = await audit_records(server)
    assert [r["commit"] for r in records] == ["truncated", "truncated"]
