"""Anthropic Messages API, mapped both ways to OpenAI chat completions.

Reference: https://docs.anthropic.com/en/api/messages and .../messages-streaming.
System messages become the ``system`` prompt; assistant ``tool_calls`` become
``tool_use`` blocks and ``tool`` messages ``tool_result`` blocks; usage maps cache
reads/writes (``cache_read_input_tokens``/``cache_creation_input_tokens``) into the
normalized prompt count.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ai.providers.base import (
    ChoiceDelta,
    Completion,
    ProviderError,
    SSEEvent,
    StreamItem,
    UpstreamCall,
    error_from_event,
    iter_sse,
    open_post,
    post_json,
    tool_call_arguments,
    tool_call_start,
)
from ai.usage import Usage

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",  # cut by the context window, not done
}

# --- request mapping -------------------------------------------------------------------


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    role = message["role"]
    if role == "tool":
        return [
            {
                "type": "tool_result",
                "tool_use_id": message.get("tool_call_id", ""),
                "content": _text(message.get("content")),
            }
        ]
    blocks: list[dict[str, Any]] = []
    text = _text(message.get("content"))
    if text:
        blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        fn = call.get("function", {})
        try:
            args = json.loads(fn.get("arguments") or "{}")
        except ValueError:
            args = {}
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id", ""),
                "name": fn.get("name", ""),
                "input": args,
            }
        )
    return blocks


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, dict):
        return {"type": "tool", "name": choice.get("function", {}).get("name", "")}
    return {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}.get(
        str(choice)
    )


def map_request(body: dict[str, Any], default_max_tokens: int, stream: bool) -> dict[str, Any]:
    system = "\n\n".join(
        _text(m.get("content")) for m in body["messages"] if m["role"] in ("system", "developer")
    )
    messages: list[dict[str, Any]] = []
    for m in body["messages"]:
        if m["role"] in ("system", "developer"):
            continue
        role = "assistant" if m["role"] == "assistant" else "user"
        blocks = _blocks(m)
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    out: dict[str, Any] = {
        "model": body["model"],
        "messages": messages,
        "max_tokens": body.get("max_completion_tokens")
        or body.get("max_tokens")
        or default_max_tokens,
    }
    if system:
        out["system"] = system
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p")):
        if body.get(src) is not None:
            out[dst] = body[src]
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if body.get("tools"):
        out["tools"] = [
            {
                "name": t["function"]["name"],
                "description": t["function"].get("description", ""),
                "input_schema": t["function"].get("parameters") or {"type": "object"},
            }
            for t in body["tools"]
        ]
        choice = _tool_choice(body.get("tool_choice"))
        if choice is not None:
            out["tool_choice"] = choice
    if stream:
        out["stream"] = True
    return out


def _headers(call: UpstreamCall) -> dict[str, str]:
    headers = {"anthropic-version": call.config.anthropic_version}
    if call.credentials.api_key:
        headers["x-api-key"] = call.credentials.api_key
    return headers


# --- response mapping ------------------------------------------------------------------


def map_usage(raw: dict[str, Any]) -> Usage:
    read = int(raw.get("cache_read_input_tokens") or 0)
    write = int(raw.get("cache_creation_input_tokens") or 0)
    return Usage(
        prompt_tokens=int(raw.get("input_tokens") or 0) + read + write,
        completion_tokens=int(raw.get("output_tokens") or 0),
        cached_tokens=read,
        cache_write_tokens=write,
    )


def map_response(data: dict[str, Any]) -> Completion:
    if data.get("type") == "error" or not isinstance(data.get("content"), list):
        raise ProviderError("protocol", "upstream response is not a message")
    text = "".join(b.get("text", "") for b in data["content"] if b.get("type") == "text")
    calls = [
        {
            "id": b["id"],
            "type": "function",
            "function": {"name": b["name"], "arguments": json.dumps(b.get("input", {}))},
        }
        for b in data["content"]
        if b.get("type") == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    reason = data.get("stop_reason")  # None (a cut-off message): never invented
    finish = STOP_REASONS.get(reason, "stop") if reason else None
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
    matched = _matched(reason, data.get("stop_sequence"))
    if matched is not None:
        choice["stop_sequence"] = matched
    usage = data.get("usage")
    return Completion(
        choices=[choice],
        usage=map_usage(usage) if isinstance(usage, dict) else None,
    )


def _matched(reason: Any, sequence: Any) -> str | None:
    """The stop sequence that ended the message, when ``stop_reason`` says one did."""
    return sequence if reason == "stop_sequence" and isinstance(sequence, str) else None


# --- stream-chunk mapping --------------------------------------------------------------


class _StreamState:
    """Maps Anthropic stream events to OpenAI deltas; tool blocks get OpenAI indexes."""

    def __init__(self) -> None:
        self.start_usage: dict[str, Any] = {}
        self.tool_index: dict[int, int] = {}

    def map(self, event: str, data: dict[str, Any]) -> list[StreamItem]:
        if event == "message_start":
            self.start_usage = dict(data.get("message", {}).get("usage") or {})
            # the prompt's token count, known before the answer (message_start's usage)
            return [ChoiceDelta({"role": "assistant", "content": ""}), map_usage(self.start_usage)]
        if event == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") != "tool_use":
                return []
            index = self.tool_index[data.get("index", 0)] = len(self.tool_index)
            return [tool_call_start(index, block.get("id", ""), block.get("name", ""))]
        if event == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [ChoiceDelta({"content": delta.get("text", "")})]
            if delta.get("type") == "input_json_delta":
                index = self.tool_index.get(data.get("index", 0), 0)
                return [tool_call_arguments(index, delta.get("partial_json", ""))]
            return []
        if event == "message_delta":
            usage = {**self.start_usage, **(data.get("usage") or {})}
            delta = data.get("delta") or {}
            reason = delta.get("stop_reason")  # None: the answer is not done, never invented
            matched = _matched(reason, delta.get("stop_sequence"))
            finish = STOP_REASONS.get(reason, "stop") if reason else None
            return [ChoiceDelta({}, finish, stop_sequence=matched), map_usage(usage)]
        return []

    def map_events(
        self, events: list[SSEEvent], url: str
    ) -> tuple[list[StreamItem], ProviderError | None, bool]:
        """Items of one read's events, the error that ended the stream in it (raised
        after the items before it are forwarded), and whether ``message_stop`` came."""
        items: list[StreamItem] = []
        for event in events:
            if event.event == "error":
                return items, error_from_event(event.data, url), True
            try:
                data = json.loads(event.data)
            except ValueError:
                return items, ProviderError("protocol", "upstream sent a non-JSON event"), True
            items += self.map(event.event, data)
            if event.event == "message_stop":
                return items, None, True
        return items, None, False


class AnthropicProvider:
    """Anthropic's Messages API."""

    async def complete(self, call: UpstreamCall) -> Completion:
        url = call.config.base_url.rstrip("/") + "/messages"
        body = map_request(call.body, call.config.default_max_tokens, stream=False)
        return map_response(await post_json(call, url, _headers(call), body))

    async def stream(self, call: UpstreamCall) -> AsyncIterator[list[StreamItem]]:
        url = call.config.base_url.rstrip("/") + "/messages"
        payload = map_request(call.body, call.config.default_max_tokens, stream=True)
        headers = {
            **_headers(call),
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
        resp = await open_post(call, url, headers, json.dumps(payload).encode())
        state = _StreamState()
        try:
            async for events in iter_sse(resp):
                items, error, done = state.map_events(events, url)
                if items:
                    yield items
                if error is not None:
                    raise error
                if done:
                    return
        finally:
            resp.release()
        raise ProviderError("truncated", f"upstream stream {url} ended before message_stop")

    async def embed(self, call: UpstreamCall) -> dict[str, Any]:
        raise ProviderError("protocol", "Anthropic offers no embeddings endpoint")
