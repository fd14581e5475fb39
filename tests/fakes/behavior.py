"""What a fake upstream does, read from the model name, and the answer it generates.

Markers anywhere in the model name (combinable): ``fail500`` / ``fail429`` (error
status before anything), ``failafter<N>`` (drop the connection after N content
tokens), ``slow<ms>`` (wait before the first token), ``errorevent`` (a 200 stream that
carries only an error event), ``cached`` (report prompt-cache reads/writes),
``nousage`` (report no usage at all), ``long<N>`` (answer N tokens whatever the
prompt, unless capped by the request's max tokens), ``truncate<N>`` (end cleanly after N
content tokens with no finish reason and no stream terminator, as a cut-off upstream
does), ``noterminator`` (a stream that says its finish reason but ends without its
terminator: OpenAI's ``[DONE]``, Anthropic's ``message_stop``, Bedrock's final
``metadata``), ``nostopreason`` (an answer that ends with its terminator but names no
finish / stop reason), ``prompt<N>`` (report N prompt tokens, as an upstream whose
tokenizer counts more than the gateway's estimate does). The answer is
``Echo: <last user text>`` word by word (up to the first of the request's stop
sequences), or a call of the first tool when the request offers tools and the last
message is not a tool result.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

STATS = web.AppKey("fake_stats", dict)


@dataclass(frozen=True, slots=True)
class Behavior:
    fail_status: int | None = None
    fail_after: int | None = None
    slow_ms: int = 0
    error_event: bool = False
    cached: bool = False
    no_usage: bool = False
    long: int | None = None
    truncate: int | None = None
    no_terminator: bool = False
    no_stop_reason: bool = False
    prompt: int | None = None

    @classmethod
    def of(cls, model: str) -> Behavior:
        status = re.search(r"fail(500|429|503)", model)
        after = re.search(r"failafter(\d+)", model)
        slow = re.search(r"slow(\d+)", model)
        long = re.search(r"long(\d+)", model)
        truncate = re.search(r"truncate(\d+)", model)
        prompt = re.search(r"prompt(\d+)", model)
        return cls(
            fail_status=int(status.group(1)) if status else None,
            fail_after=int(after.group(1)) if after else None,
            slow_ms=int(slow.group(1)) if slow else 0,
            error_event="errorevent" in model,
            cached="cached" in model,
            no_usage="nousage" in model,
            long=int(long.group(1)) if long else None,
            truncate=int(truncate.group(1)) if truncate else None,
            no_terminator="noterminator" in model,
            no_stop_reason="nostopreason" in model,
            prompt=int(prompt.group(1)) if prompt else None,
        )


def text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            text_of(p["content"]) if p.get("type") == "tool_result" else str(p.get("text", ""))
            for p in content
            if isinstance(p, dict)
        )
    return ""


def words(text: str) -> int:
    return len(text.split())


@dataclass(frozen=True, slots=True)
class Answer:
    tokens: list[str]
    tool: tuple[str, str, str] | None  # (id, name, arguments json)
    finish: str  # "stop" | "length" | "tool_calls"
    prompt_tokens: int
    stop_sequence: str | None = None  # the request's stop sequence that ended the answer

    @property
    def completion_tokens(self) -> int:
        return len(self.tokens) + (3 if self.tool else 0)


def answer(
    last_user: str,
    prompt_text: str,
    tool_name: str | None,
    max_tokens: int | None,
    length: int | None = None,
    stop: list[str] | None = None,
    prompt_tokens: int | None = None,
) -> Answer:
    prompt = prompt_tokens or max(1, words(prompt_text))
    if tool_name is not None:
        args = json.dumps({"query": last_user})
        return Answer([], ("call_fake_1", tool_name, args), "tool_calls", prompt)
    tokens = ["Echo:"] + [" " + w for w in last_user.split()]
    if length is not None:
        tokens = (tokens + [" more"] * length)[:length]
    finish = "stop"
    if max_tokens is not None and len(tokens) > max_tokens:
        tokens, finish = tokens[:max_tokens], "length"
    tokens, matched = _until_stop(tokens, stop or [])
    return Answer(tokens, None, "stop" if matched else finish, prompt, matched)


def _until_stop(tokens: list[str], stop: list[str]) -> tuple[list[str], str | None]:
    """The tokens before the first of ``stop`` in their text (the stop sequence itself
    is not sent, as the real APIs do) and the sequence that matched."""
    text = ""
    for i, token in enumerate(tokens):
        joined = text + token
        hits = [(joined.find(s), s) for s in stop if s and s in joined]
        if hits:
            at, seq = min(hits)
            head = joined[len(text) : at] if at > len(text) else ""
            return tokens[:i] + ([head] if head else []), seq
        text = joined
    return tokens, None


def count(app: web.Application, body: Any) -> None:
    stats = app[STATS]
    stats["requests"] += 1
    stats["bodies"] = ([*stats["bodies"], body])[-20:]


def new_stats() -> dict[str, Any]:
    return {"requests": 0, "bodies": []}


async def stats_handler(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATS])


async def reset_handler(request: web.Request) -> web.Response:
    request.app[STATS].update(new_stats())
    return web.json_response({"ok": True})


def add_stats_routes(app: web.Application) -> None:
    app[STATS] = new_stats()
    app.router.add_get("/_fake/stats", stats_handler)
    app.router.add_post("/_fake/reset", reset_handler)


async def drop(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Abort the connection mid-body (what a crashed upstream looks like).

    The pause first lets the client consume what was sent: aiohttp's reader raises a
    connection error ahead of still-buffered data.
    """
    await asyncio.sleep(0.2)
    transport = request.transport
    if transport is not None:
        transport.abort()
    return response
