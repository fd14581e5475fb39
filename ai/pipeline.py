"""The chat pipeline: route -> budget -> exact cache -> semantic cache -> upstream ->
caches -> metering, filling the request's audit trace on the way, with the commit
point and the overflow policies.

Commit point: the first content or tool delta written to the client. Before it, a
failure of a route with an overflow policy (the local models' routes, ``local/*``:
connect error, 429/5xx, error-only stream, the time-to-first-token deadline, or the
route's own admission limit) goes to that policy: ``queue`` waits (bounded) and
retries, ``spill`` re-runs this whole pipeline for the remote model, ``reject``
answers 503 + Retry-After and calls nothing remote.
After it the model never changes: an upstream failure ends the stream with an in-band
error and no ``[DONE]``, and the run is audited as truncated.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from ai.admission import Admission
from ai.audit import AuditLog, NullAudit
from ai.backend import BudgetBackend, ResponseCache
from ai.budget import Budgets, Prices, Reservation
from ai.cache import SingleFlight
from ai.canonical import exact_key, resolved_request
from ai.chunks import Envelope, Shape, choices_text
from ai.config import AIConfig, OverflowConfig
from ai.errors import BadRequest, GatewayError, Overloaded, RateLimited, UpstreamFailed
from ai.keys import KeyStore, Principal
from ai.metering import Metering
from ai.providers import ProviderError, UpstreamCall
from ai.routing import ResolvedRoute, Router
from ai.semcache_api import SemanticCache, partition_key, semantic_text
from ai.state import Loaded, StateStore
from ai.streaming import ChatRun, Outcome, collect_answer, replay, stream_answer
from ai.tokens import count_images, count_messages, count_text
from ai.trace import Trace
from ai.usage import Usage

log = logging.getLogger("spectra.ai")
SINGLE_CHOICE_PROVIDERS = frozenset({"anthropic", "bedrock"})
# Retry-After of an upstream 429 that named none (Bedrock's ThrottlingException never
# does): clients back off at least this long instead of retrying at once.
UPSTREAM_RETRY_AFTER_S = 1
# The completion cap sent upstream when it is below the client's own max_tokens (the
# model's limit or the key's budget clamped it), sent as x-spectra-completion-cap.
COMPLETION_CAP = web.RequestKey("completion_cap", int)


class _Spill(Exception):
    """Internal: the overflow policy chose to spill to the remote model."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Gateway:
    """What one gateway process runs on (config, router, keys, HTTP session, caches,
    budgets, metering, audit, admission limits) and the pipeline over it."""

    def __init__(
        self,
        config: AIConfig,
        router: Router,
        session: aiohttp.ClientSession,
        cache: ResponseCache | None,
        semcache: SemanticCache | None,
        audit: AuditLog | NullAudit,
        state: StateStore | None = None,
        restored: Loaded | None = None,
        keys: KeyStore | None = None,
        budgets: BudgetBackend | None = None,
    ) -> None:
        self.config = config
        self.router = router
        self.keys = keys or KeyStore("", ())
        self.session = session
        self.cache = cache
        self.semcache = semcache
        self.audit = audit
        self.budgets: BudgetBackend = budgets or Budgets(
            store=state,
            restored=restored.budgets if restored else None,
            windows=restored.windows if restored else None,
        )
        self.prices = Prices(config.prices)
        self.metering = Metering(state, restored.meters if restored else None)
        self.flights = SingleFlight()
        self.admissions = {
            r.pattern: Admission(r.overflow) for r in config.routes if r.overflow is not None
        }

    def reconfigure(self, config: AIConfig, router: Router, keys: KeyStore) -> None:
        """Take a new configuration's keys, routes, providers, prices and budget limits
        (``ai.reload``); nothing here awaits, so no request sees half of it. Admission
        state survives for a route whose overflow settings did not change."""
        admissions = {}
        for route in config.routes:
            if route.overflow is None:
                continue
            old = self.admissions.get(route.pattern)
            same = old is not None and old.config == route.overflow
            admissions[route.pattern] = (
                old if old is not None and same else Admission(route.overflow)
            )
        self.config, self.router, self.keys = config, router, keys
        self.prices = Prices(config.prices)
        self.admissions = admissions

    async def write_audit(self, trace: Trace) -> None:
        await self.audit.write(trace.record())

    # --- the pipeline ---------------------------------------------------------------

    async def chat(
        self,
        http: web.Request,
        principal: Principal,
        body: dict[str, Any],
        trace: Trace,
        shape: Callable[[str, int, str], Shape] = Envelope,
    ) -> web.StreamResponse:
        """Run one chat request; ``shape`` writes the answers (OpenAI's by default,
        Anthropic's for ``/v1/messages``), everything else is the same pipeline."""
        stream = bool(body.get("stream"))
        trace.stream, trace.model_requested = stream, body["model"]
        route = self.router.resolve(body["model"])
        trace.model_routed, trace.provider = route.upstream_model, route.provider_name
        trace.region = route.provider_config.region
        n = body.get("n") or 1
        if n > 1 and route.provider_config.kind in SINGLE_CHOICE_PROVIDERS:
            raise BadRequest(f"n > 1 is not supported for model {body['model']}", param="n")
        want = self._completion_want(body, route)
        envelope = shape(f"chatcmpl-{trace.request_id}", int(time.time()), body["model"])
        req = ChatRun(
            http,
            principal,
            body,
            route,
            envelope,
            stream,
            stream
            and (
                envelope.usage_always
                or bool((body.get("stream_options") or {}).get("include_usage"))
            ),
            count_messages(body["messages"], body.get("tools")),
            want,
        )
        prompt = self._prompt_reserve(req)
        resolved = resolved_request(body, route.upstream_model)
        key = exact_key(principal.tenant, route.provider_name, resolved)
        # a shared store: the exact read goes out with the reservation (one round trip)
        early = (
            self.cache.start_lookup(key, principal.tenant)
            if self.cache is not None and self.cache.remote
            else None
        )
        try:
            reservation = await self.budgets.acquire(
                principal.key_id,
                principal.tenant,
                principal.budget,
                prompt,
                want * n,
                self.prices.cost(body["model"], Usage(prompt, want * n)),
            )
        except BaseException:
            if early is not None:
                await self._abandon(early, key, principal.tenant)
            raise
        trace.mark("admitted")
        usage: Usage | None = None
        try:
            hit, holds = await self._lookup(req, resolved, key, trace, early)
            trace.mark("cache_lookup")
            if hit is not None:
                return await replay(req, hit, trace)
            flight = self.flights.follow(key) if self.cache is not None else None
            # Holding the shared lock, this request calls upstream even when this
            # process has a leader already: that one took no lock (ours was held) and
            # waits for our entry in the store like any other instance's follower.
            if flight is not None and not holds:
                value = await asyncio.shield(flight)
                if value is not None:
                    trace.cache = "coalesced"
                    return await replay(req, value, trace)
            leader = self.cache is not None and flight is None
            if leader and not holds and self.cache is not None:  # and across instances
                try:
                    shared = await self.cache.coalesce(key, principal.tenant)
                except BaseException:
                    self.flights.finish(key, None)
                    raise
                if shared is not None:  # its answer (we hold nothing to release)
                    self.flights.finish(key, shared)
                    trace.cache = "coalesced"
                    return await replay(req, shared, trace)
            outcome: Outcome | None = None
            try:
                outcome = await self._upstream(req, reservation, trace)
                if outcome.value is not None:  # stored before followers are released
                    await self._store(req, resolved, key, outcome.value)
            except _Spill as spill:
                return await self._spill(req, spill.reason, reservation, trace)
            finally:
                if leader:
                    self.flights.finish(key, None if outcome is None else outcome.value)
                if leader or holds:
                    assert self.cache is not None
                    await self.cache.release(key, principal.tenant)
            usage = outcome.usage or Usage(
                req.prompt_estimate, count_text(outcome.text), estimated=True
            )
            trace.usage, trace.cost_usd = usage, self.prices.cost(body["model"], usage)
            self.metering.record(principal.key_id, body["model"], usage, trace.cost_usd)
            if self.config.audit.include_content:
                trace.content = {"messages": body["messages"], "response": outcome.text}
            return outcome.response
        finally:
            if usage is None and trace.commit == "truncated" and trace.usage is not None:
                usage = trace.usage  # a cut-off answer the client got as an error
                trace.cost_usd = self.prices.cost(body["model"], usage)
            await self.budgets.settle(reservation, usage, trace.cost_usd)

    @staticmethod
    def _prompt_reserve(req: ChatRun) -> int:
        """Prompt tokens to reserve: the estimate times the provider's
        ``reserve_factor`` (its tokenizer may count more than cl100k), plus
        ``image_reserve_tokens`` per image part, so the upstream's own count of the
        prompt stays within what was reserved."""
        provider = req.route.provider_config
        images = count_images(req.body["messages"]) * provider.image_reserve_tokens
        return math.ceil(req.prompt_estimate * provider.reserve_factor) + images

    def _completion_want(self, body: dict[str, Any], route: ResolvedRoute) -> int:
        """Completion tokens to reserve per choice (and cap the upstream at): the
        client's cap, never above the model's limit (the route's ``max_output_tokens``);
        no cap from the client: the model's limit, else the smaller of the gateway's
        reserve and the provider's default completion size."""
        limit = route.spec.max_output_tokens
        asked = body.get("max_completion_tokens") or body.get("max_tokens")
        if asked:
            return int(min(asked, limit) if limit else asked)
        if limit:
            return limit
        return min(self.config.completion_reserve_tokens, route.provider_config.default_max_tokens)

    async def _abandon(
        self, early: asyncio.Future[tuple[dict[str, Any] | None, bool]], key: str, tenant: str
    ) -> None:
        """The reservation failed: let go of a lock the early read took."""
        assert self.cache is not None
        try:
            _, holds = await asyncio.shield(early)
        except Exception:  # the refusal is the answer, not the store's state
            return
        if holds:
            await self.cache.release(key, tenant)

    async def _lookup(
        self,
        req: ChatRun,
        resolved: dict[str, Any],
        key: str,
        trace: Trace,
        early: asyncio.Future[tuple[dict[str, Any] | None, bool]] | None = None,
    ) -> tuple[dict[str, Any] | None, bool]:
        """The exact (``early``: already sent), then the semantic cache's answer; and
        whether this request took the shared singleflight lock on its miss."""
        if self.cache is None:
            return None, False
        tenant = req.principal.tenant
        hit, holds = await (early or self.cache.lookup(key, tenant))
        if hit is not None:
            trace.cache = "hit"
            return hit, False
        trace.cache = "miss"
        if self.semcache is None:
            return None, holds
        try:
            entry = await self._semantic(req, resolved, tenant, trace)
        except BaseException:
            if holds:
                await self.cache.release(key, tenant)
            raise
        if entry is not None and holds:
            await self.cache.release(key, tenant)  # answered without an upstream call
        return entry, holds and entry is None

    async def _semantic(
        self, req: ChatRun, resolved: dict[str, Any], tenant: str, trace: Trace
    ) -> dict[str, Any] | None:
        assert self.cache is not None and self.semcache is not None
        text = semantic_text(resolved, self.config.semantic_cache.max_messages)
        if text is None:
            return None
        partition = partition_key(tenant, req.route.provider_name, resolved)
        found = await self.semcache.lookup(partition, text)
        if found is None:
            return None
        entry = await self.cache.get(found.entry_id, tenant)
        if entry is not None:
            trace.cache, trace.similarity = "semantic_hit", found.similarity
        return entry

    async def _store(
        self, req: ChatRun, resolved: dict[str, Any], key: str, value: dict[str, Any]
    ) -> None:
        if self.cache is None:
            return
        await self.cache.put(key, req.principal.tenant, value)
        if self.semcache is None:
            return
        text = semantic_text(resolved, self.config.semantic_cache.max_messages)
        if text is not None:
            partition = partition_key(req.principal.tenant, req.route.provider_name, resolved)
            await self.semcache.add(partition, text, key, req.principal.tenant)

    async def _spill(
        self, req: ChatRun, reason: str, reservation: Reservation, trace: Trace
    ) -> web.StreamResponse:
        overflow = req.route.spec.overflow
        assert overflow is not None and overflow.spill_model is not None
        trace.overflow = {
            "policy": "spill",
            "decision": "spilled",
            "reason": reason,
            "to": overflow.spill_model,
        }
        trace.commit = "none"
        await self.budgets.settle(reservation, None, 0.0)
        log.info("spilling %s to %s: %s", req.body["model"], overflow.spill_model, reason)
        child = trace.child()
        try:
            return await self.chat(
                req.http,
                req.principal,
                {**req.body, "model": overflow.spill_model},
                child,
                type(req.envelope),
            )
        except GatewayError as exc:
            child.fail(exc)
            raise
        finally:
            await self.write_audit(child)

    # --- upstream and overflow ------------------------------------------------------

    async def _upstream(self, req: ChatRun, reservation: Reservation, trace: Trace) -> Outcome:
        overflow = req.route.spec.overflow
        if overflow is None:
            try:
                return await self._attempt(req, reservation, trace, None)
            except ProviderError as exc:
                raise self._upstream_error(req, exc, trace) from None
        return await self._overflow(req, reservation, trace, overflow)

    async def _overflow(
        self, req: ChatRun, reservation: Reservation, trace: Trace, overflow: OverflowConfig
    ) -> Outcome:
        admission = self.admissions[req.route.spec.pattern]
        loop = asyncio.get_running_loop()
        deadline, backoff, attempts = loop.time() + overflow.queue_timeout_s, 0.05, 0
        waited = False  # queue: a slot was not free at once, or an attempt failed
        while True:
            admitted = admission.try_acquire()
            if not admitted and overflow.policy == "queue":
                waited = True
                admitted = await admission.acquire(max(0.0, deadline - loop.time()))
            reason = "admission limit reached"
            if admitted:
                attempts += 1
                try:
                    outcome = await self._attempt(req, reservation, trace, overflow.ttft_timeout_s)
                    if waited or attempts > 1:
                        trace.overflow = {
                            "policy": "queue",
                            "decision": "queued",
                            "attempts": attempts,
                        }
                    return outcome
                except ProviderError as exc:
                    reason = f"{exc.kind}" + (f" {exc.status}" if exc.status else "")
                    trace.error = {"upstream": {"kind": exc.kind, "status": exc.status}}
                finally:
                    admission.release()
            left = deadline - loop.time()
            if overflow.policy == "queue" and left > backoff:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            if overflow.policy == "spill":
                raise _Spill(reason)
            trace.overflow = {
                "policy": overflow.policy,
                "decision": "rejected",
                "reason": reason,
                "attempts": attempts,
            }
            raise Overloaded(
                f"local model {req.body['model']} is unavailable ({reason}); "
                f"overflow policy `{overflow.policy}` sent nothing elsewhere",
                retry_after=overflow.retry_after_s,
            )

    def _upstream_error(self, req: ChatRun, exc: ProviderError, trace: Trace) -> GatewayError:
        log.warning(
            "upstream %s failed before anything reached the client: %s (status %s)",
            req.route.provider_name,
            exc.kind,
            exc.status,
        )
        trace.error = {"upstream": {"kind": exc.kind, "status": exc.status}}
        if exc.kind == "truncated":
            trace.commit = "truncated"
            return UpstreamFailed(
                f"upstream provider {req.route.provider_name} ended its answer without "
                "saying it was complete; the response is incomplete"
            )
        if exc.status == 429:
            return RateLimited(
                f"upstream provider {req.route.provider_name} is rate limiting",
                retry_after=exc.retry_after or UPSTREAM_RETRY_AFTER_S,
            )
        return UpstreamFailed(
            f"upstream provider {req.route.provider_name} failed ({exc.kind}"
            + (f", HTTP {exc.status})" if exc.status else ")")
        )

    def _call(
        self, req: ChatRun, reservation: Reservation, trace: Trace
    ) -> tuple[UpstreamCall, bool]:
        body = {k: v for k, v in req.body.items() if k not in ("stream", "stream_options")}
        body["model"] = req.route.upstream_model
        cap, n = reservation.completion_cap, req.body.get("n") or 1
        asked = req.body.get("max_completion_tokens") or req.body.get("max_tokens")
        # Every upstream request carries the cap the reservation covers, so an answer
        # can never cost more than was reserved; a cap the client did not ask for (or a
        # smaller one) is a clamp, and a "length" answer under it is not cached.
        clamped = asked is None or (cap is not None and cap < asked * n)
        if cap is not None:
            per_choice = max(1, cap // n)
            named = [f for f in ("max_completion_tokens", "max_tokens") if body.get(f)]
            default = (
                "max_completion_tokens"
                if req.route.provider_config.kind == "openai"
                else "max_tokens"
            )
            for field in named or [default]:
                body[field] = min(int(body.get(field) or per_choice), per_choice)
            trace.completion_cap = {"asked": asked, "sent": per_choice}
            if asked is not None and per_choice < asked:
                # said so: the answer's header names the cap the client got instead
                req.http[COMPLETION_CAP] = per_choice
        return UpstreamCall(
            body, self.session, req.route.provider_config, req.route.credentials
        ), clamped

    async def _attempt(
        self, req: ChatRun, reservation: Reservation, trace: Trace, ttft: float | None
    ) -> Outcome:
        call, clamped = self._call(req, reservation, trace)
        trace.mark("upstream_start")
        if req.stream:
            return await stream_answer(req, call, clamped, trace, ttft)
        if ttft is not None:  # an overflow route: stream upstream so the deadline applies
            return await collect_answer(req, call, clamped, trace, ttft)
        completion = await req.route.provider.complete(call)
        trace.mark("upstream_done")
        text = choices_text(completion.choices)
        usage = completion.usage or Usage(req.prompt_estimate, count_text(text), estimated=True)
        if not completion.choices or any(c["finish_reason"] is None for c in completion.choices):
            trace.usage = usage  # the cut-off answer was paid for upstream: charged
            raise ProviderError("truncated", "upstream answer carries no finish reason")
        trace.commit = "completed"
        truncated = clamped and any(c["finish_reason"] == "length" for c in completion.choices)
        value = None if truncated else {"choices": completion.choices, "usage": usage.to_openai()}
        body = req.envelope.completion(completion.choices, usage)
        return Outcome(web.json_response(body), value, usage, text)
