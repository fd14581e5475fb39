"""Stop sequences end to end: each provider's wire format naming the matched sequence
(Anthropic ``stop_sequence``, Bedrock ``additionalModelResponseFields``, vLLM
``stop_reason``) reaches an anthropic SDK client as ``stop_reason: stop_sequence`` with
the sequence, stream and non-stream, from the cache too; OpenAI's upstream names none,
so the answer is an ``end_turn`` with no sequence (never invented), and OpenAI-shaped
answers never carry the field."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer

from tests.unit.ai.conftest import KEY_A, audit_records
from tests.unit.ai.test_messages import sdk

NAMING = ["claude-sonnet-4", "bedrock/anthropic.claude", "local/llama"]
ASK: list[Any] = [{"role": "user", "content": "alpha beta HALT gamma delta"}]


async def _ask(client: anthropic.AsyncAnthropic, model: str, stream: bool) -> Any:
    kwargs: dict[str, Any] = {
        "model": model,
        "max_tokens": 64,
        "messages": ASK,
        "stop_sequences": ["never", "HALT"],
    }
    if not stream:
        return await client.messages.create(**kwargs)
    async with client.messages.stream(**kwargs) as s:
        return await s.get_final_message()


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", NAMING)
async def test_matched_sequence_reaches_the_client(
    gateway: TestServer, model: str, stream: bool
) -> None:
    async with sdk(gateway) as client:
        for expected_cache in ("miss", "hit"):
            msg = await _ask(client, model, stream)
            assert msg.stop_reason == "stop_sequence" and msg.stop_sequence == "HALT"
            assert msg.content[0].type == "text"
            assert msg.content[0].text == "Echo: alpha beta "  # the sequence is not sent
            record = (await audit_records(gateway))[-1]
            assert record["cache"]["outcome"] == expected_cache


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True])
async def test_openai_upstream_names_no_sequence(gateway: TestServer, stream: bool) -> None:
    async with sdk(gateway) as client:
        msg = await _ask(client, "gpt-4o-mini", stream)
    assert msg.content[0].type == "text" and msg.content[0].text == "Echo: alpha beta "
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None


@pytest.mark.asyncio
async def test_message_delta_names_the_sequence(gateway: TestServer) -> None:
    """The raw event stream: ``message_delta`` carries the reason and the sequence."""
    body = {
        "model": "claude-sonnet-4",
        "max_tokens": 64,
        "messages": ASK,
        "stop_sequences": ["HALT"],
        "stream": True,
    }
    headers = {"x-api-key": KEY_A, "anthropic-version": "2023-06-01"}
    async with (
        ClientSession() as http,
        http.post(gateway.make_url("/v1/messages"), json=body, headers=headers) as resp,
    ):
        raw = (await resp.text()).split("\n\n")
    events = [json.loads(e.split("data: ", 1)[1]) for e in raw if "data: " in e]
    delta = next(e for e in events if e["type"] == "message_delta")["delta"]
    assert delta == {"stop_reason": "stop_sequence", "stop_sequence": "HALT"}


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True])
async def test_openai_shape_carries_no_stop_sequence(gateway: TestServer, stream: bool) -> None:
    body = {
        "model": "local/llama",
        "messages": ASK,
        "stop": ["HALT"],
        "stream": stream,
    }
    headers = {"Authorization": f"Bearer {KEY_A}"}
    async with (
        ClientSession() as http,
        http.post(gateway.make_url("/v1/chat/completions"), json=body, headers=headers) as resp,
    ):
        text = await resp.text()
    assert resp.status == 200
    if stream:
        chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        choices = [c for chunk in chunks for c in chunk["choices"]]
    else:
        choices = json.loads(text)["choices"]
    assert choices and all("stop_sequence" not in c for c in choices)
    assert choices[-1]["finish_reason"] == "stop"
