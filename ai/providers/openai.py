"""OpenAI chat completions (and any OpenAI-compatible upstream).

Reference: https://platform.openai.com/docs/api-reference/chat. The stream always asks
the upstream for usage (``stream_options.include_usage``); the pipeline decides what
the client sees. vLLM's ``stop_reason`` extension (the matched stop string) is read
here too: OpenAI never sends it.
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
)
from ai.usage import Usage

# --- request mapping -------------------------------------------------------------------


def _headers(call: UpstreamCall) -> dict[str, str]:
    key = call.credentials.api_key
    return {"Authorization": f"Bearer {key}"} if key else {}


def _url(call: UpstreamCall, path: str) -> str:
    return call.config.base_url.rstrip("/") + path


def map_request(body: dict[str, Any], stream: bool) -> dict[str, Any]:
    out = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# --- response mapping ------------------------------------------------------------------


def map_response(data: dict[str, Any]) -> Completion:
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise ProviderError("protocol", "upstream response has no choices")
    usage = data.get("usage")
    out = []
    for i, c in enumerate(choices):
        choice = {
            "index": c.get("index", i),
            "message": c.get("message") or {},
            "finish_reason": c.get("finish_reason"),  # None: never invented
        }
        if (matched := _matched(c)) is not None:
            choice["stop_sequence"] = matched
        out.append(choice)
    return Completion(out, Usage.from_openai(usage) if isinstance(usage, dict) else None)


def _matched(choice: dict[str, Any]) -> str | None:
    """vLLM's ``stop_reason`` (not in OpenAI's API): the stop string that ended the
    choice (an integer for a stop token id, None for EOS)."""
    reason = choice.get("stop_reason")
    return reason if choice.get("finish_reason") == "stop" and isinstance(reason, str) else None


# --- stream-chunk mapping --------------------------------------------------------------


def map_chunk(data: dict[str, Any]) -> list[StreamItem]:
    items: list[StreamItem] = [
        ChoiceDelta(c.get("delta") or {}, c.get("finish_reason"), c.get("index", 0), _matched(c))
        for c in data.get("choices") or ()
    ]
    if isinstance(data.get("usage"), dict):
        items.append(Usage.from_openai(data["usage"]))
    return items


def map_events(
    events: list[SSEEvent], url: str
) -> tuple[list[StreamItem], ProviderError | None, bool]:
    """Items of one read's events, the error that ended the stream in it (raised after
    the items before it are forwarded), and whether ``[DONE]`` came."""
    items: list[StreamItem] = []
    for event in events:
        if event.data.strip() == "[DONE]":
            return items, None, True
        try:
            data = json.loads(event.data)
        except ValueError:
            return items, ProviderError("protocol", "upstream sent a non-JSON chunk"), True
        if not isinstance(data, dict) or "error" in data:
            return items, error_from_event(event.data, url), True
        items += map_chunk(data)
    return items, None, False


class OpenAIProvider:
    """Any OpenAI-compatible upstream."""

    async def complete(self, call: UpstreamCall) -> Completion:
        url = _url(call, "/chat/completions")
        return map_response(
            await post_json(call, url, _headers(call), map_request(call.body, stream=False))
        )

    async def stream(self, call: UpstreamCall) -> AsyncIterator[list[StreamItem]]:
        url = _url(call, "/chat/completions")
        body = json.dumps(map_request(call.body, stream=True)).encode()
        headers = {
            **_headers(call),
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
        resp = await open_post(call, url, headers, body)
        try:
            async for events in iter_sse(resp):
                items, error, done = map_events(events, url)
                if items:
                    yield items
                if error is not None:
                    raise error
                if done:
                    return
        finally:
            resp.release()
        raise ProviderError("truncated", f"upstream stream {url} ended before [DONE]")

    async def embed(self, call: UpstreamCall) -> dict[str, Any]:
        return await post_json(call, _url(call, "/embeddings"), _headers(call), call.body)
