"""Request bodies the gateway accepts, validated strictly (unknown fields -> 400).

Strict positions are the top level of each request and each chat message, as in
OpenAI's API ("Unrecognized request argument supplied"). Nested free-form objects
(tool schemas, response_format) pass through.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ai.errors import BadRequest


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None


class StreamOptions(_Strict):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class ChatRequest(_Strict):
    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=16)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    user: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None


class EmbeddingRequest(_Strict):
    model: str = Field(min_length=1)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None


def describe(exc: ValidationError) -> tuple[str, str | None]:
    """The first validation error as (message, param), naming the field."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or None
    if err["type"] == "extra_forbidden":
        return f"Unrecognized request argument supplied: {where}", where
    return f"Invalid value for '{where}': {err['msg']}", where


def parse_chat(raw: Any) -> dict[str, Any]:
    """Validated chat body as a plain dict (fields the client did not send omitted)."""
    try:
        return ChatRequest.model_validate(raw).model_dump(exclude_none=True)
    except ValidationError as exc:
        message, param = describe(exc)
        raise BadRequest(message, param=param) from None


def parse_embedding(raw: Any) -> dict[str, Any]:
    try:
        return EmbeddingRequest.model_validate(raw).model_dump(exclude_none=True)
    except ValidationError as exc:
        message, param = describe(exc)
        raise BadRequest(message, param=param) from None
