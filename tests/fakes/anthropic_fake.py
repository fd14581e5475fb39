"""Fake Anthropic Messages API: JSON, or SSE with ``event:`` + ``data:`` lines
(message_start, content_block_start/delta/stop, message_delta, message_stop; ``error``)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from tests.fakes.behavior import Behavior, add_stats_routes, answer, count, drop, text_of

STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def _answer(body: dict[str, Any]) -> Any:
    messages = body.get("messages") or []
    last_content = messages[-1].get("content") if messages else ""
    is_tool_result = isinstance(last_content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in last_content
    )
    tools = body.get("tools") or []
    tool = tools[0]["name"] if tools and not is_tool_result else None
    prompt = " ".join(
        [body.get("system", "") if isinstance(body.get("system"), str) else ""]
        + [text_of(m.get("content")) for m in messages]
    )
    return answer(
        text_of(last_content),
        prompt,
        tool,
        body.get("max_tokens"),
        (behavior := Behavior.of(str(body.get("model", "")))).long,
        body.get("stop_sequences"),
        behavior.prompt,
    )


def _stop(a: Any) -> str:
    return "stop_sequence" if a.stop_sequence else STOP[a.finish]


def _usage(a: Any, cached: bool, output: int | None = None) -> dict[str, Any]:
    read, write = (3, 1) if cached else (0, 0)
    return {
        "input_tokens": max(1, a.prompt_tokens - read - write),
        "output_tokens": a.completion_tokens if output is None else output,
        "cache_read_input_tokens": read,
        "cache_creation_input_tokens": write,
    }


def _error(status: int) -> web.Response:
    kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(status, "api_error")
    return web.json_response(
        {"type": "error", "error": {"type": kind, "message": f"fake failure {status}"}},
        status=status,
    )


async def messages(request: web.Request) -> web.StreamResponse:
    if not (request.headers.get("x-api-key") or request.headers.get("Authorization")) or (
        not request.headers.get("anthropic-version")
    ):
        return web.json_response(
            {
                "type": "error",
                "error": {"type": "authentication_error", "message": "missing x-api-key"},
            },
            status=401,
        )
    body = await request.json()
    count(request.app, body)
    behavior = Behavior.of(body.get("model", ""))
    if behavior.fail_status:
        return _error(behavior.fail_status)
    if behavior.slow_ms:
        await asyncio.sleep(behavior.slow_ms / 1000)
    a = _answer(body)
    content: list[dict[str, Any]] = []
    tokens = a.tokens if behavior.truncate is None else a.tokens[: behavior.truncate]
    if tokens:
        content.append({"type": "text", "text": "".join(tokens)})
    if a.tool:
        content.append(
            {"type": "tool_use", "id": a.tool[0], "name": a.tool[1], "input": json.loads(a.tool[2])}
        )
    message = {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": None
        if behavior.truncate is not None or behavior.no_stop_reason
        else _stop(a),
        "stop_sequence": a.stop_sequence if behavior.truncate is None else None,
        "usage": _usage(a, behavior.cached),
    }
    if not body.get("stream"):
        return _error(500) if behavior.error_event else web.json_response(message)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)

    async def send(event: str, data: dict[str, Any]) -> None:
        await resp.write(
            f"event: {event}\ndata: {json.dumps({'type': event, **data})}\n\n".encode()
        )

    if behavior.error_event:
        await send("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
        return resp
    await send(
        "message_start",
        {
            "message": {
                **message,
                "content": [],
                "stop_reason": None,
                "usage": _usage(a, behavior.cached, 1),
            }
        },
    )
    await send("ping", {})
    index = 0
    if a.tokens:
        await send(
            "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
        )
        for i, token in enumerate(a.tokens):
            if behavior.fail_after is not None and i >= behavior.fail_after:
                return await drop(request, resp)
            if behavior.truncate is not None and i >= behavior.truncate:
                return resp  # a clean end: no message_delta, no message_stop
            await send(
                "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": token}}
            )
        await send("content_block_stop", {"index": 0})
        index = 1
    if a.tool:
        await send(
            "content_block_start",
            {
                "index": index,
                "content_block": {
                    "type": "tool_use",
                    "id": a.tool[0],
                    "name": a.tool[1],
                    "input": {},
                },
            },
        )
        await send(
            "content_block_delta",
            {"index": index, "delta": {"type": "input_json_delta", "partial_json": a.tool[2]}},
        )
        await send("content_block_stop", {"index": index})
    await send(
        "message_delta",
        {
            "delta": {
                "stop_reason": None if behavior.no_stop_reason else _stop(a),
                "stop_sequence": a.stop_sequence,
            },
            "usage": {"output_tokens": a.completion_tokens},
        },
    )
    if not behavior.no_terminator:
        await send("message_stop", {})
    return resp


def create_anthropic_fake() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)  # long prompts, like the real APIs
    add_stats_routes(app)
    app.router.add_post("/v1/messages", messages)
    return app
