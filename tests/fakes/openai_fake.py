"""Fake OpenAI-compatible upstream (OpenAI and vLLM): chat completions as JSON or SSE
chunks (``data: {...}`` ... ``data: [DONE]``, usage chunk when asked), embeddings;
:func:`create_vllm_fake` adds vLLM's ``stop_reason``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import time
from typing import Any

from aiohttp import web

from tests.fakes.behavior import Behavior, add_stats_routes, answer, count, drop, text_of


def _answer(body: dict[str, Any]) -> Any:
    messages = body.get("messages") or []
    last = text_of(messages[-1].get("content")) if messages else ""
    tools = body.get("tools") or []
    tool = tools[0]["function"]["name"] if tools and messages[-1].get("role") != "tool" else None
    prompt = " ".join(text_of(m.get("content")) for m in messages)
    return answer(
        last,
        prompt,
        tool,
        body.get("max_completion_tokens") or body.get("max_tokens"),
        (behavior := Behavior.of(str(body.get("model", "")))).long,
        [stop] if isinstance(stop := body.get("stop"), str) else stop,
        behavior.prompt,
    )


def _usage(a: Any, cached: bool) -> dict[str, Any]:
    return {
        "prompt_tokens": a.prompt_tokens,
        "completion_tokens": a.completion_tokens,
        "total_tokens": a.prompt_tokens + a.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 2 if cached else 0},
    }


def _error(status: int) -> web.Response:
    return web.json_response(
        {
            "error": {
                "message": f"fake failure {status}",
                "type": "server_error",
                "param": None,
                "code": None,
            }
        },
        status=status,
        headers={"Retry-After": "1"},
    )


VLLM = web.AppKey("vllm", bool)


def _choice(request: web.Request, a: Any, finish: str | None) -> dict[str, Any]:
    """vLLM adds ``stop_reason`` (the matched stop string) to a finished choice."""
    if not request.app[VLLM] or finish is None:
        return {}
    return {"stop_reason": a.stop_sequence}


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    count(request.app, body)
    behavior = Behavior.of(body.get("model", ""))
    if behavior.fail_status:
        return _error(behavior.fail_status)
    if behavior.slow_ms:
        await asyncio.sleep(behavior.slow_ms / 1000)
    a = _answer(body)
    base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": body["model"]}
    if not body.get("stream"):
        if behavior.error_event:
            return _error(500)
        tokens = a.tokens if behavior.truncate is None else a.tokens[: behavior.truncate]
        finish = None if behavior.truncate is not None or behavior.no_stop_reason else a.finish
        message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens) or None}
        if a.tool:
            message["tool_calls"] = [
                {
                    "id": a.tool[0],
                    "type": "function",
                    "function": {"name": a.tool[1], "arguments": a.tool[2]},
                }
            ]
        return web.json_response(
            {
                **base,
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": finish,
                        **_choice(request, a, finish),
                    }
                ],
                **({} if behavior.no_usage else {"usage": _usage(a, behavior.cached)}),
            }
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)

    async def send(data: dict[str, Any]) -> None:
        await resp.write(b"data: " + json.dumps(data).encode() + b"\n\n")

    if behavior.error_event:
        await send({"error": {"message": "fake overloaded", "type": "server_error"}})
        return resp
    chunk = {**base, "object": "chat.completion.chunk"}
    await send(
        {
            **chunk,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
        }
    )
    for i, token in enumerate(a.tokens):
        if behavior.fail_after is not None and i >= behavior.fail_after:
            return await drop(request, resp)
        if behavior.truncate is not None and i >= behavior.truncate:
            return resp  # a clean end: no finish reason, no [DONE]
        await send(
            {**chunk, "choices": [{"index": 0, "delta": {"content": token}, "finish_reason": None}]}
        )
    if a.tool:
        await send(
            {
                **chunk,
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": a.tool[0],
                                    "type": "function",
                                    "function": {"name": a.tool[1], "arguments": ""},
                                }
                            ]
                        },
                        "finish_reason": None,
                    }
                ],
            }
        )
        await send(
            {
                **chunk,
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [{"index": 0, "function": {"arguments": a.tool[2]}}]
                        },
                        "finish_reason": None,
                    }
                ],
            }
        )
    finish = None if behavior.no_stop_reason else a.finish
    last = {"index": 0, "delta": {}, "finish_reason": finish, **_choice(request, a, finish)}
    await send({**chunk, "choices": [last]})
    if (body.get("stream_options") or {}).get("include_usage") and not behavior.no_usage:
        await send({**chunk, "choices": [], "usage": _usage(a, behavior.cached)})
    if not behavior.no_terminator:
        await resp.write(b"data: [DONE]\n\n")
    return resp


def _vector(text: str, dims: int = 8) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    return [b / 255 for b in digest[:dims]]


async def embeddings(request: web.Request) -> web.Response:
    body = await request.json()
    count(request.app, body)
    behavior = Behavior.of(body.get("model", ""))
    if behavior.fail_status:
        return _error(behavior.fail_status)
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = []
    for i, item in enumerate(inputs):
        vec = _vector(json.dumps(item))
        emb: Any = vec
        if body.get("encoding_format") == "base64":
            emb = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    tokens = sum(len(json.dumps(i).split()) for i in inputs)
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def create_openai_fake(vllm: bool = False) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)  # long prompts, like the real APIs
    app[VLLM] = vllm
    add_stats_routes(app)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/embeddings", embeddings)
    return app


def create_vllm_fake() -> web.Application:
    """The same upstream with vLLM's ``stop_reason`` extension."""
    return create_openai_fake(vllm=True)
