"""OpenAI response shapes the gateway emits: completions, stream chunks, SSE framing.

Also :class:`Assembler`, which folds stream deltas into a complete response (for the
cache and the audit), and :func:`replay_chunks`, which turns a complete response back
into stream deltas (a cache hit served to a streaming client). A choice may carry the
matched ``stop_sequence`` (for Anthropic's shape); OpenAI's shape leaves it out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from ai.providers import ChoiceDelta
from ai.usage import Usage

_dumps = json.JSONEncoder(separators=(",", ":")).encode


class Shape(Protocol):
    """How one request's answers are written: OpenAI's chat completions (:class:`Envelope`)
    or Anthropic's Messages (``ai.messages_wire``). Built per request from
    ``(id, created, model)``; ``usage_always`` says the stream ends with its usage even
    when the client did not ask for it."""

    usage_always: ClassVar[bool]

    def head(self, usage: Usage) -> bytes:
        """The bytes that open a stream, before its first delta; ``usage``: the prompt's
        tokens as known then (the upstream's count if it sent one, else an estimate)."""
        ...

    def completion(self, choices: list[dict[str, Any]], usage: Usage | None) -> dict[str, Any]:
        """The non-stream body of complete ``choices``."""
        ...

    def frame(self, delta: ChoiceDelta) -> bytes:
        """The stream bytes of one delta."""
        ...

    def tail(self, usage: Usage | None) -> bytes:
        """The bytes that end a complete stream (with ``usage`` when given)."""
        ...

    def error_frame(self, message: str) -> bytes:
        """An in-band error that ends a stream cut off after the commit point."""
        ...


@dataclass(frozen=True, slots=True)
class Envelope:
    """What every response of one request shares (OpenAI's chat-completions shape)."""

    usage_always: ClassVar[bool] = False

    id: str
    created: int
    model: str
    _frame_head: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Every stream chunk starts alike: encode that once, not once per chunk.
        head = _dumps({"id": self.id, "object": "chat.completion.chunk", "created": self.created})[
            :-1
        ]
        head += f',"model":{_dumps(self.model)},"choices":['
        object.__setattr__(self, "_frame_head", b"data: " + head.encode())

    def head(self, usage: Usage) -> bytes:
        return b""  # OpenAI's stream starts with its first chunk

    def completion(self, choices: list[dict[str, Any]], usage: Usage | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            # the matched stop sequence is not part of OpenAI's choice
            "choices": [
                {"logprobs": None, **{k: v for k, v in c.items() if k != "stop_sequence"}}
                for c in choices
            ],
        }
        if usage is not None:
            body["usage"] = usage.to_openai()
        return body

    def chunk(self, delta: ChoiceDelta) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": delta.index,
                    "delta": delta.delta,
                    "finish_reason": delta.finish_reason,
                    "logprobs": None,
                }
            ],
        }

    def frame(self, delta: ChoiceDelta) -> bytes:
        """``sse(self.chunk(delta))``, encoding only the delta."""
        choice = {
            "index": delta.index,
            "delta": delta.delta,
            "finish_reason": delta.finish_reason,
            "logprobs": None,
        }
        return self._frame_head + _dumps(choice).encode() + b"]}\n\n"

    def usage_chunk(self, usage: Usage) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage.to_openai(),
        }

    def tail(self, usage: Usage | None) -> bytes:
        return (b"" if usage is None else sse(self.usage_chunk(usage))) + DONE

    def error_frame(self, message: str) -> bytes:
        error = {"message": message, "type": "api_error", "param": None}
        return sse({"error": {**error, "code": "upstream_truncated"}})


def sse(data: dict[str, Any]) -> bytes:
    return b"data: " + _dumps(data).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


@dataclass(slots=True)
class _Choice:
    content: list[str] = field(default_factory=list)
    tools: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    stop_sequence: str | None = None


class Assembler:
    """Folds deltas into OpenAI choices."""

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}

    def add(self, delta: ChoiceDelta) -> None:
        choice = self._choices.setdefault(delta.index, _Choice())
        if delta.delta.get("content"):
            choice.content.append(delta.delta["content"])
        for call in delta.delta.get("tool_calls") or ():
            slot = choice.tools.setdefault(
                call.get("index", 0),
                {"id": "", "type": "function", "function": {"name": "", "arguments": ""}},
            )
            slot["id"] = call.get("id") or slot["id"]
            fn = call.get("function") or {}
            slot["function"]["name"] += fn.get("name") or ""
            slot["function"]["arguments"] += fn.get("arguments") or ""
        if delta.finish_reason:
            choice.finish_reason = delta.finish_reason
            choice.stop_sequence = delta.stop_sequence

    @property
    def complete(self) -> bool:
        return bool(self._choices) and all(c.finish_reason for c in self._choices.values())

    def text(self) -> str:
        return "".join(
            "".join(c.content) + "".join(t["function"]["arguments"] for t in c.tools.values())
            for c in self._choices.values()
        )

    def choices(self) -> list[dict[str, Any]]:
        out = []
        for index, choice in sorted(self._choices.items()):
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(choice.content) or None,
            }
            if choice.tools:
                message["tool_calls"] = [t for _, t in sorted(choice.tools.items())]
            done: dict[str, Any] = {
                "index": index,
                "message": message,
                "finish_reason": choice.finish_reason,  # None only if incomplete
            }
            if choice.stop_sequence is not None:
                done["stop_sequence"] = choice.stop_sequence
            out.append(done)
        return out


def replay_chunks(choices: list[dict[str, Any]]) -> list[ChoiceDelta]:
    """Stream deltas that reproduce complete choices."""
    out: list[ChoiceDelta] = []
    for choice in choices:
        index, message = choice.get("index", 0), choice.get("message") or {}
        out.append(ChoiceDelta({"role": "assistant", "content": ""}, None, index))
        if message.get("content"):
            out.append(ChoiceDelta({"content": message["content"]}, None, index))
        calls = message.get("tool_calls") or []
        if calls:
            out.append(
                ChoiceDelta(
                    {"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]}, None, index
                )
            )
        finish = choice.get("finish_reason") or "stop"
        out.append(ChoiceDelta({}, finish, index, choice.get("stop_sequence")))
    return out


def choices_text(choices: list[dict[str, Any]]) -> str:
    parts = []
    for choice in choices:
        message = choice.get("message") or {}
        parts.append(message.get("content") or "")
        parts.extend(c["function"]["arguments"] for c in message.get("tool_calls") or ())
    return "".join(parts)
