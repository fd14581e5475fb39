"""Metering: usage normalized across providers, estimates only when none was given."""

from __future__ import annotations

import openai
import pytest
from aiohttp.test_utils import TestServer

from ai.providers.anthropic import map_usage as anthropic_usage
from ai.providers.bedrock import map_usage as bedrock_usage
from ai.server import GATEWAY
from ai.tokens import count_messages, count_text
from ai.usage import Usage
from tests.unit.ai.conftest import audit_records


def test_anthropic_and_bedrock_usage_normalize() -> None:
    assert anthropic_usage(
        {
            "input_tokens": 5,
            "output_tokens": 7,
            "cache_read_input_tokens": 3,
            "cache_creation_input_tokens": 2,
        }
    ) == Usage(10, 7, 3, 2)
    assert bedrock_usage(
        {
            "inputTokens": 5,
            "outputTokens": 7,
            "totalTokens": 12,
            "cacheReadInputTokens": 3,
            "cacheWriteInputTokens": 2,
        }
    ) == Usage(10, 7, 3, 2)
    assert Usage(10, 7, 3).to_openai() == {
        "prompt_tokens": 10,
        "completion_tokens": 7,
        "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 3},
    }


def test_offline_tiktoken_counts() -> None:
    assert count_text("hello world") == 2  # cl100k_base, loaded offline
    assert count_messages([{"role": "user", "content": "hello world"}]) == 8


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("model", "cached"), [("gpt-cached", 2), ("claude-cached", 3), ("bedrock/m-cached", 4)]
)
@pytest.mark.parametrize("stream", [False, True])
async def test_cached_tokens_metered(
    client: openai.AsyncOpenAI, gateway: TestServer, model: str, cached: int, stream: bool
) -> None:
    kwargs = {"stream": True, "stream_options": {"include_usage": True}} if stream else {}
    got = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "count these words now"}], **kwargs
    )  # type: ignore[call-overload]
    if stream:
        chunks = [c async for c in got]
        usage = chunks[-1].usage
    else:
        usage = got.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == cached
    meter = gateway.app[GATEWAY].metering.get("key-a", model)
    assert meter.cached_tokens == cached and meter.completion_tokens == 5
    assert meter.estimated_requests == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True])
async def test_estimate_only_without_upstream_usage(
    client: openai.AsyncOpenAI, gateway: TestServer, stream: bool
) -> None:
    got = await client.chat.completions.create(
        model="gpt-nousage", messages=[{"role": "user", "content": "no usage here"}], stream=stream
    )
    if stream:
        _ = [c async for c in got]  # type: ignore[union-attr]
    record = (await audit_records(gateway))[-1]
    assert record["usage"]["estimated"] is True
    assert record["usage"]["completion"] == count_text("Echo: no usage here")
    assert gateway.app[GATEWAY].metering.get("key-a", "gpt-nousage").estimated_requests == 1
