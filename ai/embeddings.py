"""POST /v1/embeddings: routed like chat, metered, audited; OpenAI-compatible upstreams.

An embeddings request on a route with an overflow policy (a local model's) that fails,
or finds the route at its admission limit, answers 503 whatever the policy: embeddings
never queue and never spill to a remote model.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ai.errors import BadRequest, Overloaded, UpstreamFailed
from ai.keys import Principal
from ai.pipeline import Gateway
from ai.providers import ProviderError, UpstreamCall
from ai.tokens import count_text
from ai.trace import Trace
from ai.usage import Usage

EMBEDDING_PROVIDERS = frozenset({"openai", "vllm"})


def _input_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


async def embeddings(
    gw: Gateway, principal: Principal, body: dict[str, Any], trace: Trace
) -> web.StreamResponse:
    trace.model_requested = body["model"]
    route = gw.router.resolve(body["model"])
    trace.model_routed, trace.provider = route.upstream_model, route.provider_name
    trace.region = route.provider_config.region
    if route.provider_config.kind not in EMBEDDING_PROVIDERS:
        raise BadRequest(f"model {body['model']} does not offer embeddings", param="model")
    estimate = count_text(_input_text(body["input"]))
    reservation = await gw.budgets.acquire(
        principal.key_id,
        principal.tenant,
        principal.budget,
        estimate,
        0,
        gw.prices.cost(body["model"], Usage(estimate)),
    )
    usage: Usage | None = None
    overflow = route.spec.overflow
    admission = gw.admissions.get(route.spec.pattern)
    try:
        admitted = admission is not None and admission.try_acquire()
        if admission is not None and not admitted:
            assert overflow is not None
            trace.overflow = {
                "policy": overflow.policy,
                "decision": "rejected",
                "reason": "admission limit reached",
            }
            raise Overloaded(
                f"local model {body['model']} is at its admission limit",
                retry_after=overflow.retry_after_s,
            )
        try:
            call = UpstreamCall(
                {**body, "model": route.upstream_model},
                gw.session,
                route.provider_config,
                route.credentials,
            )
            trace.mark("upstream_start")
            data = await route.provider.embed(call)
        except ProviderError as exc:
            trace.error = {"upstream": {"kind": exc.kind, "status": exc.status}}
            if overflow is not None:
                trace.overflow = {
                    "policy": overflow.policy,
                    "decision": "rejected",
                    "reason": exc.kind,
                }
                raise Overloaded(
                    f"local model {body['model']} is unavailable ({exc.kind})",
                    retry_after=overflow.retry_after_s,
                ) from None
            raise UpstreamFailed(
                f"upstream provider {route.provider_name} failed ({exc.kind})"
            ) from None
        finally:
            if admission is not None and admitted:
                admission.release()
        trace.mark("upstream_done")
        raw = data.get("usage") or {}
        usage = (
            Usage(int(raw.get("prompt_tokens") or 0)) if raw else Usage(estimate, estimated=True)
        )
        trace.usage, trace.cost_usd = usage, gw.prices.cost(body["model"], usage)
        trace.commit = "completed"
        gw.metering.record(principal.key_id, body["model"], usage, trace.cost_usd)
        data["model"] = body["model"]
        data["usage"] = {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens}
        return web.json_response(data)
    finally:
        await gw.budgets.settle(reservation, usage, trace.cost_usd)
