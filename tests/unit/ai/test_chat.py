"""Chat completions through the official openai SDK (strict validation) for each provider."""

from __future__ import annotations

import openai
import pytest

MODELS = ["gpt-4o-mini", "claude-sonnet-4", "bedrock/anthropic.claude-3-haiku-v1:0", "local/llama"]


@pytest.mark.asyncio
@pytest.mark.parametrize("model", MODELS)
async def test_non_stream(client: openai.AsyncOpenAI, model: str) -> None:
    resp = await client.chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there"},
        ],
    )
    assert resp.choices[0].message.content == "Echo: hello there"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.model == model
    assert resp.usage is not None and resp.usage.completion_tokens == 3


@pytest.mark.asyncio
@pytest.mark.parametrize("model", MODELS)
async def test_stream_with_usage(client: openai.AsyncOpenAI, model: str) -> None:
    stream = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "stream me please"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == "Echo: stream me please"
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == 4 and usage.prompt_tokens >= 3


@pytest.mark.asyncio
@pytest.mark.parametrize("model", MODELS)
async def test_stream_strips_usage_unless_asked(client: openai.AsyncOpenAI, model: str) -> None:
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "no usage"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "look something up",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]


@pytest.mark.asyncio
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stream", [False, True])
async def test_tool_calls(client: openai.AsyncOpenAI, model: str, stream: bool) -> None:
    messages = [{"role": "user", "content": "find cats"}]
    if not stream:
        resp = await client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
        calls = resp.choices[0].message.tool_calls
        assert resp.choices[0].finish_reason == "tool_calls"
        assert calls is not None and calls[0].function.name == "lookup"
        assert calls[0].function.arguments == '{"query": "find cats"}'
        call_id = calls[0].id
    else:
        got = await client.chat.completions.create(
            model=model, messages=messages, tools=TOOLS, stream=True
        )
        name, args, call_id, finish = "", "", "", None
        async for chunk in got:
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for call in choice.delta.tool_calls or ():
                    call_id = call.id or call_id
                    name += (call.function and call.function.name) or ""
                    args += (call.function and call.function.arguments) or ""
        assert (name, args, finish) == ("lookup", '{"query": "find cats"}', "tool_calls")
    # The tool result goes back; the fake answers with text once it sees it.
    follow = await client.chat.completions.create(
        model=model,
        messages=[
            *messages,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"query": "find cats"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": "three cats"},
        ],
        tools=TOOLS,
    )
    assert follow.choices[0].message.content == "Echo: three cats"
