"""``POST /v1/messages``: Anthropic's Messages API on the gateway, over the chat pipeline.

A Messages request (https://docs.anthropic.com/en/api/messages) is validated strictly
(unknown fields -> 400, as for chat) and mapped to the gateway's internal chat request:
``system`` -> a system message, ``tool_use`` blocks -> ``tool_calls``, ``tool_result``
blocks -> ``tool`` messages, ``image`` blocks -> image parts, ``tools`` /
``tool_choice`` / ``stop_sequences`` / ``metadata.user_id`` to their chat fields. The
``anthropic-version`` header is required, as Anthropic requires it
(https://docs.anthropic.com/en/api/versioning): ``2023-01-01``, ``2023-06-01`` or
``2026-10-21``, which refuses ``temperature`` and ``top_p`` (400), as Anthropic does. The
same keys, budgets, caches, audit and routing (to any provider) then apply; answers are
written by :class:`~ai.messages_wire.AnthropicShape`.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ai.errors import BadRequest
from ai.schema import describe, parse_chat


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputMessage(_Strict):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class Metadata(_Strict):
    user_id: str | None = None


class MessagesRequest(_Strict):
    model: str = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    messages: list[InputMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stream: bool | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: Metadata | None = None


# Versions of Anthropic's API whose Messages shape the endpoint speaks.
ANTHROPIC_VERSIONS = ("2023-01-01", "2023-06-01", "2026-10-21")
# Request fields a version removed (Anthropic answers 400 for them).
_REMOVED = {"2026-10-21": ("temperature", "top_p")}


def _check_version(version: str | None) -> str:
    accepted = f"accepted values: {list(ANTHROPIC_VERSIONS)}"
    if version is None:
        raise BadRequest(f"anthropic-version: header is required; {accepted}")
    if version not in ANTHROPIC_VERSIONS:
        raise BadRequest(f"anthropic-version: unknown version {version!r}; {accepted}")
    return version


_BLOCKS = {"user": ("text", "image", "tool_result"), "assistant": ("text", "tool_use")}
_CHOICES = ("auto", "any", "tool", "none")


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for j, block in enumerate(content or ()):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise BadRequest(
                f"Invalid value for '{where}.{j}.type': accepted values: ['text']",
                param=f"{where}.{j}.type",
            )
        parts.append(str(block.get("text") or ""))
    return "".join(parts)


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif source.get("type") == "url":
        url = str(source.get("url"))
    else:
        raise BadRequest(
            f"Invalid value for '{where}.source.type': accepted values: ['base64', 'url']",
            param=f"{where}.source.type",
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _map_message(i: int, message: InputMessage) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(message.content):
        where, kind = f"messages.{i}.content.{j}", block.get("type")
        if kind not in _BLOCKS[message.role]:
            raise BadRequest(
                f"Invalid value for '{where}.type': {message.role} messages accept "
                f"{list(_BLOCKS[message.role])}",
                param=f"{where}.type",
            )
        if kind == "text":
            parts.append({"type": "text", "text": str(block.get("text") or "")})
        elif kind == "image":
            parts.append(_image(block, where))
        elif kind == "tool_use":
            arguments = json.dumps(block.get("input") or {}, separators=(",", ":"))
            calls.append(
                {
                    "id": str(block.get("id") or ""),
                    "type": "function",
                    "function": {"name": str(block.get("name") or ""), "arguments": arguments},
                }
            )
        else:  # tool_result: a tool message, before the user's own content
            text = _text_of(block.get("content") or "", f"{where}.content")
            out.append(
                {"role": "tool", "tool_call_id": str(block.get("tool_use_id")), "content": text}
            )
    if parts or calls or not out:
        mapped: dict[str, Any] = {"role": message.role}
        if all(p["type"] == "text" for p in parts):
            mapped["content"] = "".join(p["text"] for p in parts) or None
        else:
            mapped["content"] = parts
        if calls:
            mapped["tool_calls"] = calls
        out.append(mapped)
    return out


def _tool_choice(choice: dict[str, Any]) -> str | dict[str, Any]:
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": str(choice.get("name") or "")}}
    mapped = {"auto": "auto", "any": "required", "none": "none"}.get(str(kind))
    if mapped is None:
        raise BadRequest(
            f"Invalid value for 'tool_choice.type': accepted values: {list(_CHOICES)}",
            param="tool_choice.type",
        )
    return mapped


def parse_messages(raw: Any, version: str | None) -> dict[str, Any]:
    """A validated Messages request (of the ``anthropic-version`` header's ``version``)
    as the gateway's internal chat request."""
    version = _check_version(version)
    for name in _REMOVED.get(version, ()):
        if isinstance(raw, dict) and name in raw:
            raise BadRequest(
                f"{name}: not accepted with anthropic-version {version}; "
                "send it with anthropic-version 2023-06-01",
                param=name,
            )
    try:
        req = MessagesRequest.model_validate(raw)
    except ValidationError as exc:
        message, param = describe(exc)
        raise BadRequest(message, param=param) from None
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append({"role": "system", "content": _text_of(req.system, "system")})
    for i, turn in enumerate(req.messages):
        messages.extend(_map_message(i, turn))
    body: dict[str, Any] = {
        "model": req.model,
        "messages": messages,
        "max_tokens": req.max_tokens,
        "stream": req.stream,
        "stop": req.stop_sequences,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "user": req.metadata.user_id if req.metadata else None,
    }
    if req.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.get("name"),
                    "description": t.get("description") or "",
                    "parameters": t.get("input_schema") or {"type": "object"},
                },
            }
            for t in req.tools
        ]
    if req.tool_choice is not None:
        body["tool_choice"] = _tool_choice(req.tool_choice)
    return parse_chat({k: v for k, v in body.items() if v is not None})
