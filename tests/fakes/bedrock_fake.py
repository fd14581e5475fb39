"""Fake Bedrock Runtime: Converse (JSON) and ConverseStream (binary AWS event-stream
with prelude and message CRCs); errors as ``:message-type exception`` frames."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from ai.providers.eventstream import encode
from tests.fakes.behavior import Behavior, add_stats_routes, answer, count, drop

STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def _text(blocks: list[dict[str, Any]]) -> str:
    return " ".join(
        b["text"] if "text" in b else _text(b["toolResult"]["content"])
        for b in blocks
        if "text" in b or "toolResult" in b
    )


def _answer(body: dict[str, Any], behavior: Behavior) -> Any:
    messages = body.get("messages") or []
    last = messages[-1]["content"] if messages else []
    is_result = any("toolResult" in b for b in last)
    tools = (body.get("toolConfig") or {}).get("tools") or []
    tool = tools[0]["toolSpec"]["name"] if tools and not is_result else None
    prompt = " ".join([_text(body.get("system") or [])] + [_text(m["content"]) for m in messages])
    inference = body.get("inferenceConfig") or {}
    cap, stop = inference.get("maxTokens"), inference.get("stopSequences")
    return answer(_text(last), prompt, tool, cap, behavior.long, stop, behavior.prompt)


def _stop(body: dict[str, Any], a: Any) -> dict[str, Any]:
    """``stopReason``, and the matched sequence where Claude names it: only when the
    request asked for ``/delta/stop_sequence``, answered as ``{"delta": {...}}`` (the
    path ``/stop_sequence`` points at nothing), as Bedrock does."""
    if not a.stop_sequence:
        return {"stopReason": STOP[a.finish]}
    out: dict[str, Any] = {"stopReason": "stop_sequence"}
    if "/delta/stop_sequence" in (body.get("additionalModelResponseFieldPaths") or ()):
        out["additionalModelResponseFields"] = {"delta": {"stop_sequence": a.stop_sequence}}
    return out


def _usage(a: Any, cached: bool) -> dict[str, Any]:
    read, write = (4, 2) if cached else (0, 0)
    out = {
        "inputTokens": max(1, a.prompt_tokens - read - write),
        "outputTokens": a.completion_tokens,
        "totalTokens": a.prompt_tokens + a.completion_tokens,
    }
    if cached:
        out |= {"cacheReadInputTokens": read, "cacheWriteInputTokens": write}
    return out


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return encode(
        {":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
        json.dumps(payload).encode(),
    )


def _check(request: web.Request) -> web.Response | None:
    if not request.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 "):
        return web.json_response(
            {"message": "missing SigV4 signature"},
            status=403,
            headers={"x-amzn-ErrorType": "UnrecognizedClientException"},
        )
    return None


def _error(status: int) -> web.Response:
    kind = "ThrottlingException" if status == 429 else "InternalServerException"
    return web.json_response(
        {"message": f"fake failure {status}"}, status=status, headers={"x-amzn-ErrorType": kind}
    )


async def _start(request: web.Request) -> tuple[dict[str, Any], Behavior, Any]:
    body = await request.json()
    model = request.match_info["model"]
    count(request.app, {"model": model, **body})
    behavior = Behavior.of(model)
    return body, behavior, _answer(body, behavior)


async def converse(request: web.Request) -> web.Response:
    if (denied := _check(request)) is not None:
        return denied
    body, behavior, a = await _start(request)
    if behavior.fail_status or behavior.error_event:
        return _error(behavior.fail_status or 500)
    if behavior.slow_ms:
        await asyncio.sleep(behavior.slow_ms / 1000)
    content: list[dict[str, Any]] = []
    tokens = a.tokens if behavior.truncate is None else a.tokens[: behavior.truncate]
    if tokens:
        content.append({"text": "".join(tokens)})
    if a.tool:
        content.append(
            {"toolUse": {"toolUseId": a.tool[0], "name": a.tool[1], "input": json.loads(a.tool[2])}}
        )
    return web.json_response(
        {
            "output": {"message": {"role": "assistant", "content": content}},
            **({} if behavior.truncate is not None or behavior.no_stop_reason else _stop(body, a)),
            "usage": _usage(a, behavior.cached),
            "metrics": {"latencyMs": 1},
        }
    )


async def converse_stream(request: web.Request) -> web.StreamResponse:
    if (denied := _check(request)) is not None:
        return denied
    body, behavior, a = await _start(request)
    if behavior.fail_status:
        return _error(behavior.fail_status)
    if behavior.slow_ms:
        await asyncio.sleep(behavior.slow_ms / 1000)
    resp = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream"})
    await resp.prepare(request)
    if behavior.error_event:
        await resp.write(
            encode(
                {
                    ":exception-type": "throttlingException",
                    ":content-type": "application/json",
                    ":message-type": "exception",
                },
                json.dumps({"message": "fake throttled"}).encode(),
            )
        )
        return resp
    await resp.write(_event("messageStart", {"role": "assistant"}))
    index = 0
    if a.tokens:
        for i, token in enumerate(a.tokens):
            if behavior.fail_after is not None and i >= behavior.fail_after:
                return await drop(request, resp)
            if behavior.truncate is not None and i >= behavior.truncate:
                return resp  # a clean end: no messageStop, no metadata
            await resp.write(
                _event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": token}})
            )
        await resp.write(_event("contentBlockStop", {"contentBlockIndex": 0}))
        index = 1
    if a.tool:
        await resp.write(
            _event(
                "contentBlockStart",
                {
                    "contentBlockIndex": index,
                    "start": {"toolUse": {"toolUseId": a.tool[0], "name": a.tool[1]}},
                },
            )
        )
        await resp.write(
            _event(
                "contentBlockDelta",
                {"contentBlockIndex": index, "delta": {"toolUse": {"input": a.tool[2]}}},
            )
        )
        await resp.write(_event("contentBlockStop", {"contentBlockIndex": index}))
    await resp.write(_event("messageStop", {} if behavior.no_stop_reason else _stop(body, a)))
    if not behavior.no_terminator:  # metadata is the stream's last event
        await resp.write(
            _event("metadata", {"usage": _usage(a, behavior.cached), "metrics": {"latencyMs": 1}})
        )
    return resp


def create_bedrock_fake() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)  # long prompts, like the real APIs
    add_stats_routes(app)
    app.router.add_post("/model/{model}/converse", converse)
    app.router.add_post("/model/{model}/converse-stream", converse_stream)
    return app
