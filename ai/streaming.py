"""Answering a chat request from an upstream stream or from a cached response.

The commit point lives here: before the first content or tool delta nothing is sent
and every failure is raised as :class:`~ai.providers.ProviderError` for the overflow
policy; after it the stream is the client's, and a failure ends it in-band (an error
event, no ``[DONE]``) with the run audited as truncated. An upstream stream that ends
without a finish reason for every choice (or without its terminator, which the provider
adapters check) is such a failure: completeness is never assumed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from ai.chunks import Assembler, Shape, replay_chunks
from ai.errors import UpstreamFailed
from ai.keys import Principal
from ai.providers import ChoiceDelta, ProviderError, StreamItem, UpstreamCall
from ai.routing import ResolvedRoute
from ai.tokens import count_text
from ai.trace import Trace
from ai.usage import Usage

log = logging.getLogger("spectra.ai")


@dataclass(frozen=True, slots=True)
class ChatRun:
    """One pipeline run's fixed inputs."""

    http: web.Request
    principal: Principal
    body: dict[str, Any]
    route: ResolvedRoute
    envelope: Shape
    stream: bool
    include_usage: bool
    prompt_estimate: int
    completion_want: int


@dataclass(slots=True)
class Outcome:
    """An upstream run: the response sent, the cacheable complete value, the usage."""

    response: web.StreamResponse
    value: dict[str, Any] | None
    usage: Usage | None
    text: str


def _absorb(
    batch: Sequence[StreamItem],
    assembler: Assembler,
    usage: Usage | None,
    pending: list[ChoiceDelta] | None = None,
) -> tuple[Usage | None, bool]:
    """Feed one upstream read to ``assembler`` (and ``pending``); returns the usage so
    far and whether the read carried content."""
    content = False
    for item in batch:
        if isinstance(item, Usage):
            usage = item
            continue
        assembler.add(item)
        if pending is not None:
            pending.append(item)
        content = content or item.has_content
    return usage, content


def _cut_usage(req: ChatRun, usage: Usage | None, assembler: Assembler) -> Usage:
    """What a cut-off answer is charged: the upstream's last count (an early one, such as
    Anthropic's ``message_start``, may not cover what was sent yet) or the estimate of
    what arrived, whichever is larger."""
    sent = count_text(assembler.text())
    if usage is not None and usage.completion_tokens >= sent:
        return usage
    prompt = usage.prompt_tokens if usage is not None else req.prompt_estimate
    return Usage(prompt, sent, estimated=True)


async def stream_answer(
    req: ChatRun,
    call: UpstreamCall,
    clamped: bool,
    trace: Trace,
    ttft: float | None,
) -> Outcome:
    items = req.route.provider.stream(call)
    assembler, pending, usage = Assembler(), list[ChoiceDelta](), None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (
        ttft or req.route.spec.ttft_timeout_s or req.route.provider_config.request_timeout_s
    )
    try:
        # Before the commit point: buffer, and let failures reach the overflow policy.
        committed = False
        while not committed:
            try:
                async with asyncio.timeout_at(deadline):  # no task per read (wait_for makes one)
                    batch = await anext(items)
            except StopAsyncIteration:
                if not pending:
                    raise ProviderError("protocol", "stream ended before any output") from None
                break
            except TimeoutError:
                raise ProviderError("timeout", "time-to-first-token deadline passed") from None
            usage, content = _absorb(batch, assembler, usage, pending)
            committed = committed or content
        trace.mark("first_token")
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(req.http)
        trace.commit = "committed"
        usage = await _stream_rest(req, response, items, pending, assembler, usage, trace)
    finally:
        await items.aclose()  # type: ignore[attr-defined]
    trace.mark("upstream_done")
    value = None
    if (
        trace.commit == "completed"
        and assembler.complete
        and not (clamped and any(c["finish_reason"] == "length" for c in assembler.choices()))
    ):
        value = {"choices": assembler.choices(), "usage": (usage or Usage()).to_openai()}
    return Outcome(response, value, usage, assembler.text())


async def collect_answer(
    req: ChatRun,
    call: UpstreamCall,
    clamped: bool,
    trace: Trace,
    ttft: float,
) -> Outcome:
    """A non-stream answer read from the upstream stream, under the TTFT deadline.

    A failure after the first token is not retried elsewhere (the model never
    changes after the commit point): 502, audited as truncated.
    """
    items = req.route.provider.stream(call)
    assembler, usage, seen = Assembler(), None, False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ttft
    try:
        while True:
            try:
                async with asyncio.timeout_at(None if seen else deadline):
                    batch = await anext(items)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise ProviderError("timeout", "time-to-first-token deadline passed") from None
            usage, content = _absorb(batch, assembler, usage)
            seen = seen or content
        if not assembler.complete:
            raise ProviderError("truncated", "upstream stream ended without a finish reason")
    except ProviderError as exc:
        if not seen:
            raise
        trace.commit = "truncated"
        trace.error = {"upstream": {"kind": exc.kind, "status": exc.status}}
        trace.usage = _cut_usage(req, usage, assembler)
        raise UpstreamFailed(
            f"upstream provider {req.route.provider_name} failed mid-response "
            f"({exc.kind}); the response is incomplete"
        ) from None
    finally:
        await items.aclose()  # type: ignore[attr-defined]
    trace.mark("upstream_done")
    trace.commit = "completed"
    choices, text = assembler.choices(), assembler.text()
    usage = usage or Usage(req.prompt_estimate, count_text(text), estimated=True)
    truncated = clamped and any(c["finish_reason"] == "length" for c in choices)
    value = None if truncated else {"choices": choices, "usage": usage.to_openai()}
    body = req.envelope.completion(choices, usage)
    return Outcome(web.json_response(body), value, usage, text)


async def _stream_rest(
    req: ChatRun,
    response: web.StreamResponse,
    items: AsyncIterator[list[StreamItem]],
    pending: list[ChoiceDelta],
    assembler: Assembler,
    usage: Usage | None,
    trace: Trace,
) -> Usage | None:
    """Forward the stream after the commit point: one write per upstream read."""
    envelope = req.envelope
    known = usage or Usage(req.prompt_estimate, estimated=True)  # the prompt, so far
    try:
        head = envelope.head(Usage(known.prompt_tokens, 0, known.cached_tokens))
        await response.write(head + b"".join([envelope.frame(delta) for delta in pending]))
        try:
            async for batch in items:
                frames = []
                for item in batch:
                    if isinstance(item, Usage):
                        usage = item
                        continue
                    assembler.add(item)
                    frames.append(envelope.frame(item))
                if frames:
                    await response.write(b"".join(frames))
            if not assembler.complete:
                raise ProviderError("truncated", "upstream stream ended without a finish reason")
        except ProviderError as exc:
            # After the commit point: never switch models; end in-band, no [DONE].
            log.warning(
                "upstream %s failed after the first token: %s", req.route.provider_name, exc.kind
            )
            trace.commit = "truncated"
            trace.error = {"upstream": {"kind": exc.kind, "status": exc.status}}
            await response.write(
                envelope.error_frame(
                    f"upstream provider {req.route.provider_name} "
                    f"failed mid-stream ({exc.kind}); the response is incomplete"
                )
            )
            return _cut_usage(req, usage, assembler)
        final = None
        if req.include_usage:
            final = usage or Usage(
                req.prompt_estimate, count_text(assembler.text()), estimated=True
            )
        await response.write(envelope.tail(final))
        trace.commit = "completed"
    except ConnectionResetError:
        trace.commit = "client_disconnected"
        return _cut_usage(req, usage, assembler)
    return usage


async def replay(req: ChatRun, value: dict[str, Any], trace: Trace) -> web.StreamResponse:
    """Serve a complete cached response, as JSON or as SSE."""
    trace.commit = "cache"
    trace.usage = Usage(estimated=False)
    stored = Usage.from_openai(value.get("usage") or {})
    if not req.stream:
        return web.json_response(req.envelope.completion(value["choices"], stored))
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(req.http)
    frames = [req.envelope.head(Usage(stored.prompt_tokens, 0, stored.cached_tokens))]
    frames += [req.envelope.frame(delta) for delta in replay_chunks(value["choices"])]
    frames.append(req.envelope.tail(stored if req.include_usage else None))
    try:
        await response.write(b"".join(frames))
    except ConnectionResetError:
        trace.commit = "client_disconnected"
    return response
