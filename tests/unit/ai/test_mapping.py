"""Request mapping of the Anthropic and Bedrock adapters (system, tools, results)."""

from __future__ import annotations

from ai.providers.anthropic import map_request as anthropic_request
from ai.providers.bedrock import map_request as bedrock_request

BODY = {
    "model": "m",
    "max_tokens": 50,
    "temperature": 0.5,
    "stop": "END",
    "messages": [
        {"role": "system", "content": "sys one"},
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
                {"id": "c2", "type": "function", "function": {"name": "f", "arguments": '{"a":2}'}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "r1"},
        {"role": "tool", "tool_call_id": "c2", "content": "r2"},
    ],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": "required",
}


def test_anthropic_request() -> None:
    out = anthropic_request(BODY, 4096, stream=True)
    assert out["system"] == "sys one" and out["max_tokens"] == 50 and out["stream"] is True
    assert out["stop_sequences"] == ["END"] and out["tool_choice"] == {"type": "any"}
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "user"]
    assert out["messages"][1]["content"][1] == {
        "type": "tool_use",
        "id": "c2",
        "name": "f",
        "input": {"a": 2},
    }
    assert [b["tool_use_id"] for b in out["messages"][2]["content"]] == ["c1", "c2"]
    assert out["tools"][0]["input_schema"] == {"type": "object"}


def test_bedrock_request() -> None:
    out = bedrock_request(BODY)
    assert out["system"] == [{"text": "sys one"}]
    assert out["inferenceConfig"] == {"maxTokens": 50, "temperature": 0.5, "stopSequences": ["END"]}
    assert out["toolConfig"]["toolChoice"] == {"any": {}}
    assert out["messages"][1]["content"][0]["toolUse"]["input"] == {"a": 1}
    results = out["messages"][2]["content"]
    assert [r["toolResult"]["toolUseId"] for r in results] == ["c1", "c2"]
