"""Request and response mapping of the Anthropic and Bedrock adapters (system, tools,
results, stop reasons, the matched stop sequence)."""

from __future__ import annotations

from ai.providers.anthropic import map_request as anthropic_request
from ai.providers.anthropic import map_response as anthropic_response
from ai.providers.bedrock import STOP_SEQUENCE_PATHS
from ai.providers.bedrock import map_request as bedrock_request
from ai.providers.bedrock import map_response as bedrock_response

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


def test_context_window_stop_is_length_not_stop() -> None:
    """An answer cut by the context window is a ``length`` finish (not cached when the
    gateway capped it), never an invented ``stop``."""
    message = {"content": [{"type": "text", "text": "par"}], "usage": {}}
    cut = anthropic_response({**message, "stop_reason": "model_context_window_exceeded"})
    assert cut.choices[0]["finish_reason"] == "length"
    output = {"output": {"message": {"content": [{"text": "par"}]}}}
    cut = bedrock_response({**output, "stopReason": "model_context_window_exceeded"})
    assert cut.choices[0]["finish_reason"] == "length"


def test_bedrock_claude_asks_for_the_matched_stop_sequence() -> None:
    claude = bedrock_request({**BODY, "model": "us.anthropic.claude-sonnet-4"})
    assert claude["additionalModelResponseFieldPaths"] == list(STOP_SEQUENCE_PATHS)
    other = bedrock_request({**BODY, "model": "amazon.nova-pro-v1:0"})
    assert "additionalModelResponseFieldPaths" not in other  # fields are model-specific
    answer = {
        "output": {"message": {"content": [{"text": "x"}]}},
        "stopReason": "stop_sequence",
        "additionalModelResponseFields": {"delta": {"stop_sequence": "END"}},
    }
    assert bedrock_response(answer).choices[0]["stop_sequence"] == "END"
