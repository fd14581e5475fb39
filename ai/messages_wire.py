"""Anthropic Messages response shapes the gateway emits for ``POST /v1/messages``.

:class:`AnthropicShape` writes the pipeline's (OpenAI-shaped) choices and stream deltas
as Anthropic's Messages API does (https://docs.anthropic.com/en/api/messages and
https://docs.anthropic.com/en/docs/build-with-claude/streaming): a ``message`` object,
or the event stream ``message_start``, ``content_block_start`` /
``content_block_delta`` (``text_delta``, ``input_json_delta``) /
``content_block_stop``, ``message_delta`` (stop reason and usage) and
``message_stop``; an in-band ``error`` event for a stream cut off after the commit
point. ``message_start`` carries the prompt's input tokens; ``stop_reason`` is
``stop_sequence`` with the matched ``stop_sequence`` when the upstream named it.
:func:`error_body` is Anthropic's error shape for HTTP errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ai.errors import GatewayError
from ai.providers import ChoiceDelta
from ai.usage import Usage

_dumps = json.JSONEncoder(separators=(",", ":")).encode

# OpenAI finish reasons -> Anthropic stop reasons.
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
# HTTP status -> Anthropic error type (https://docs.anthropic.com/en/api/errors).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_body(exc: GatewayError) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}`` for ``exc``."""
    kind = _ERROR_TYPES.get(exc.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + _dumps(data).encode() + b"\n\n"


def _usage(usage: Usage | None) -> dict[str, int]:
    usage = usage or Usage()
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cached_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
    }


def _stop_reason(finish: str | None, sequence: str | None) -> str:
    """Anthropic's stop reason: ``stop_sequence`` when the upstream named the client's
    stop sequence that ended the answer (OpenAI's ``stop`` does not say which)."""
    if finish == "stop" and sequence is not None:
        return "stop_sequence"
    return STOP_REASONS.get(finish or "", "end_turn")


def _input(arguments: str) -> Any:
    try:
        return json.loads(arguments or "{}")
    except json.JSONDecodeError:
        return {}  # the model wrote invalid JSON; Anthropic's input is an object


@dataclass(slots=True)
class AnthropicShape:
    """One request's Anthropic answers; holds the stream's open content block."""

    usage_always: ClassVar[bool] = True
    id: str
    created: int
    model: str
    _block: int = field(default=-1, repr=False)  # index of the open block, -1: none
    _open: str | None = field(default=None, repr=False)  # "text" or "tool:<index>"
    _stop: str | None = field(default=None, repr=False)
    _sequence: str | None = field(default=None, repr=False)  # the matched stop sequence

    def __post_init__(self) -> None:
        self.id = "msg_" + self.id.removeprefix("chatcmpl-")

    def _message(
        self, content: list[dict[str, Any]], stop: str | None, sequence: str | None
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": sequence,
        }

    def completion(self, choices: list[dict[str, Any]], usage: Usage | None) -> dict[str, Any]:
        choice = choices[0] if choices else {}
        message = choice.get("message") or {}
        content: list[dict[str, Any]] = []
        if message.get("content"):
            content.append({"type": "text", "text": message["content"]})
        for call in message.get("tool_calls") or ():
            fn = call.get("function") or {}
            content.append(
                {
                    "type": "tool_use",
                    "id": call.get("id") or "",
                    "name": fn.get("name") or "",
                    "input": _input(fn.get("arguments") or ""),
                }
            )
        sequence = choice.get("stop_sequence")
        stop = _stop_reason(choice.get("finish_reason"), sequence)
        return {**self._message(content, stop, sequence), "usage": _usage(usage)}

    def _start_block(self, key: str, block: dict[str, Any]) -> list[bytes]:
        out = self._close_block()
        self._block += 1
        self._open = key
        start = {"type": "content_block_start", "index": self._block, "content_block": block}
        out.append(event("content_block_start", start))
        return out

    def _close_block(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [event("content_block_stop", {"type": "content_block_stop", "index": self._block})]

    def _delta(self, delta: dict[str, Any]) -> bytes:
        body = {"type": "content_block_delta", "index": self._block, "delta": delta}
        return event("content_block_delta", body)

    def head(self, usage: Usage) -> bytes:
        """``message_start``, whose usage carries the prompt's input tokens."""
        start = {**self._message([], None, None), "usage": _usage(usage)}
        return event("message_start", {"type": "message_start", "message": start})

    def frame(self, delta: ChoiceDelta) -> bytes:
        out: list[bytes] = []
        text = delta.delta.get("content")
        if text:
            if self._open != "text":
                out += self._start_block("text", {"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": text}))
        for call in delta.delta.get("tool_calls") or ():
            key = f"tool:{call.get('index', 0)}"
            fn = call.get("function") or {}
            if self._open != key:
                block: dict[str, Any] = {
                    "type": "tool_use",
                    "id": call.get("id") or "",
                    "name": fn.get("name") or "",
                    "input": {},
                }
                out += self._start_block(key, block)
            if fn.get("arguments"):
                out.append(
                    self._delta({"type": "input_json_delta", "partial_json": fn["arguments"]})
                )
        if delta.finish_reason:
            out += self._close_block()
            self._stop = _stop_reason(delta.finish_reason, delta.stop_sequence)
            self._sequence = delta.stop_sequence
        return b"".join(out)

    def tail(self, usage: Usage | None) -> bytes:
        body = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop or "end_turn", "stop_sequence": self._sequence},
            "usage": _usage(usage),
        }
        return b"".join(
            [
                *self._close_block(),
                event("message_delta", body),
                event("message_stop", {"type": "message_stop"}),
            ]
        )

    def error_frame(self, message: str) -> bytes:
        return event("error", {"type": "error", "error": {"type": "api_error", "message": message}})
