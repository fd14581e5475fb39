"""Budgets and rate limits: atomic reservation, reconciliation, no overshoot."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestServer

from ai.budget import Budgets, Prices
from ai.config import BudgetConfig, PriceConfig
from ai.errors import BudgetExhausted, BudgetHeld, RateLimited
from ai.server import GATEWAY
from ai.usage import Usage
from tests.fakes.behavior import STATS
from tests.unit.ai.conftest import Fakes, GatewayFactory, client_for, config_dict


def test_reserve_caps_completion_and_reconciles() -> None:
    budgets = Budgets()
    limits = BudgetConfig(max_tokens=100)
    first = budgets.reserve("k", limits, 10, 50, 0.0)
    second = budgets.reserve("k", limits, 10, 50, 0.0)
    assert (first.completion_cap, second.completion_cap) == (50, 30)
    with pytest.raises(BudgetExhausted):
        budgets.reserve("k", limits, 10, 50, 0.0)
    budgets.reconcile(first, Usage(10, 5), 0.0)
    budgets.reconcile(first, Usage(10, 5), 0.0)  # idempotent
    assert budgets.used("k") == (15, 0.0)
    third = budgets.reserve("k", limits, 10, 50, 0.0)
    assert third.completion_cap == 35


def test_spent_budget_is_final_held_budget_is_retried() -> None:
    """A budget that usage has spent refuses for good (x-should-retry: false); one that
    only in-flight reservations hold refuses with Retry-After, as they settle soon; a
    request whose worst case costs more than is left says so."""
    budgets = Budgets()
    tokens = BudgetConfig(max_tokens=100)
    held = budgets.reserve("k", tokens, 10, 200, 0.0)  # holds all 90 left
    with pytest.raises(BudgetHeld) as refused:
        budgets.reserve("k", tokens, 10, 50, 0.0)
    assert refused.value.headers() == {"Retry-After": "1"} and refused.value.status == 429
    budgets.reconcile(held, Usage(10, 85), 0.0)
    with pytest.raises(BudgetExhausted) as spent:
        budgets.reserve("k", tokens, 10, 50, 0.0)
    assert type(spent.value) is BudgetExhausted and "exhausted" in spent.value.message
    assert spent.value.headers() == {"x-should-retry": "false"}
    dollars = BudgetConfig(max_cost_usd=1.0)
    first = budgets.reserve("c", dollars, 1, 1, 0.75)
    with pytest.raises(BudgetHeld):
        budgets.reserve("c", dollars, 1, 1, 0.5)
    budgets.reconcile(first, Usage(1, 1), 0.75)
    with pytest.raises(BudgetExhausted) as beyond:
        budgets.reserve("c", dollars, 1, 1, 0.5)
    assert "0.500000 USD" in beyond.value.message and "0.250000 USD" in beyond.value.message
    assert "fewer max_tokens" in beyond.value.message
    budgets.reserve("c", dollars, 1, 1, 0.25)  # what is left still serves a smaller ask


def test_rate_limits_slide() -> None:
    now = [1000.0]
    budgets = Budgets(clock=lambda: now[0])
    limits = BudgetConfig(requests_per_minute=2, tokens_per_minute=100)
    budgets.reserve("k", limits, 10, 10, 0)
    budgets.reserve("k", limits, 10, 10, 0)
    with pytest.raises(RateLimited):
        budgets.reserve("k", limits, 10, 10, 0)
    now[0] += 61
    budgets.reserve("k", BudgetConfig(tokens_per_minute=100), 40, 40, 0)
    with pytest.raises(RateLimited):
        budgets.reserve("k", BudgetConfig(tokens_per_minute=100), 20, 20, 0)


def test_cost_budget_and_prices() -> None:
    prices = Prices((PriceConfig(pattern="gpt-*", input_per_mtok=1e6, output_per_mtok=2e6),))
    assert prices.cost("gpt-x", Usage(2, 3)) == 8.0
    assert prices.cost("other", Usage(2, 3)) == 0.0
    budgets = Budgets()
    budgets.reserve("k", BudgetConfig(max_cost_usd=10), 1, 1, 8.0)
    with pytest.raises(BudgetExhausted):
        budgets.reserve("k", BudgetConfig(max_cost_usd=10), 1, 1, 8.0)


@pytest.mark.asyncio
@pytest.mark.parametrize("model", ["gpt-4o-mini", "claude-sonnet-4", "local/llama"])
async def test_hundred_concurrent_requests_never_overshoot(
    make_gateway: GatewayFactory, fakes: Fakes, model: str
) -> None:
    limit = 400
    server = await make_gateway(
        budget_a={"max_tokens": limit},
        exact_cache={"enabled": False},
        overflow={"policy": "reject", "max_concurrency": 200},
    )
    async with client_for(server, timeout=30) as c:
        results = await asyncio.gather(
            *(
                c.chat.completions.create(
                    model=model,
                    max_tokens=8,
                    messages=[{"role": "user", "content": f"request number {i} with a few words"}],
                )
                for i in range(100)
            ),
            return_exceptions=True,
        )
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(ok) + len(refused) == 100 and ok and refused
    used_tokens, _ = server.app[GATEWAY].budgets.used("key-a")
    reported = sum(r.usage.total_tokens for r in ok if r.usage is not None)
    assert used_tokens == reported <= limit


@pytest.mark.asyncio
async def test_cost_budget_under_concurrency(make_gateway: GatewayFactory) -> None:
    server = await make_gateway(budget_a={"max_cost_usd": 0.0005}, exact_cache={"enabled": False})
    async with client_for(server, timeout=30) as c:
        await asyncio.gather(
            *(
                c.chat.completions.create(
                    model="gpt-4o-mini",
                    max_tokens=10,
                    messages=[{"role": "user", "content": f"cost {i}"}],
                )
                for i in range(100)
            ),
            return_exceptions=True,
        )
    _, cost = server.app[GATEWAY].budgets.used("key-a")
    assert 0 < cost <= 0.0005


async def _served(c: openai.AsyncOpenAI, model: str, stream: bool, max_tokens: int | None) -> int:
    """One request's total tokens as the client was told them."""
    extra: dict[str, Any] = {} if max_tokens is None else {"max_tokens": max_tokens}
    messages: list[Any] = [{"role": "user", "content": "tell me a long story"}]
    if not stream:
        out = await c.chat.completions.create(model=model, messages=messages, **extra)
        assert out.usage is not None
        return out.usage.total_tokens
    total = None
    chunks = await c.chat.completions.create(
        model=model,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        **extra,
    )
    async for chunk in chunks:
        if chunk.usage is not None:
            total = chunk.usage.total_tokens
    assert total is not None
    return total


async def _hundred(server: TestServer, model: str, stream: bool, max_tokens: int | None) -> int:
    async with client_for(server, timeout=60) as c:
        results = await asyncio.gather(
            *(_served(c, model, stream, max_tokens) for _ in range(100)), return_exceptions=True
        )
    ok = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(ok) + len(refused) == 100 and ok and refused, results
    return sum(ok)


LONG = {
    "gpt": "gpt-long1500",
    "claude": "claude-long1500",
    "bedrock": "bedrock/long1500",
    "vllm": "local/long1500",
}


@pytest.mark.asyncio
@pytest.mark.parametrize("provider", sorted(LONG))
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("max_tokens", [None, 2000])
async def test_token_budget_holds_against_long_answers(
    make_gateway: GatewayFactory, provider: str, stream: bool, max_tokens: int | None
) -> None:
    # The upstream answers 1,500 tokens unless capped; with no max_tokens the gateway
    # reserves completion_reserve_tokens (1,024) and must cap the upstream at that.
    limit = 10_000
    server = await make_gateway(
        budget_a={"max_tokens": limit},
        exact_cache={"enabled": False},
        overflow={"policy": "reject", "max_concurrency": 200},  # vLLM: admit all 100
    )
    served = await _hundred(server, LONG[provider], stream, max_tokens)
    used_tokens, _ = server.app[GATEWAY].budgets.used("key-a")
    assert used_tokens == served <= limit


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("max_tokens", [None, 2000])
async def test_cost_budget_holds_against_long_answers(
    make_gateway: GatewayFactory, stream: bool, max_tokens: int | None
) -> None:
    limit = 0.01  # gpt-*: 2 USD per million completion tokens, 0.003 per full answer
    server = await make_gateway(budget_a={"max_cost_usd": limit}, exact_cache={"enabled": False})
    await _hundred(server, LONG["gpt"], stream, max_tokens)
    _, cost = server.app[GATEWAY].budgets.used("key-a")
    assert 0 < cost <= limit


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("model", "upstream", "field"),
    [
        ("gpt-4o-mini", "openai", "max_completion_tokens"),
        ("claude-sonnet-4", "anthropic", "max_tokens"),
        ("local/llama", "local", "max_tokens"),
        ("bedrock/anthropic.claude", "bedrock", "maxTokens"),
    ],
)
async def test_upstream_always_gets_the_reserved_cap(
    make_gateway: GatewayFactory,
    fakes: Fakes,
    tmp_path: Path,
    model: str,
    upstream: str,
    field: str,
) -> None:
    # No client cap: the reserve (1,024), or a provider's smaller default_max_tokens.
    server = await make_gateway(completion_reserve_tokens=1024)
    async with client_for(server) as c:
        await c.chat.completions.create(model=model, messages=[{"role": "user", "content": "a"}])
        await c.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "b"}], max_tokens=7
        )
    sent = fakes.app(upstream)[STATS]["bodies"][-2:]
    if upstream == "bedrock":  # Converse: inferenceConfig.maxTokens, whatever the client's
        sent = [
            b["inferenceConfig"] | {"max_tokens": b["inferenceConfig"]["maxTokens"]} for b in sent
        ]
    assert sent[0][field] == 1024 and sent[1]["max_tokens"] == 7  # the client's own field
    config = config_dict(fakes, tmp_path)
    config["providers"]["anthropic"]["default_max_tokens"] = 300
    small = await make_gateway(providers=config["providers"])
    async with client_for(small) as c:
        await c.chat.completions.create(
            model="claude-sonnet-4", messages=[{"role": "user", "content": "c"}]
        )
    assert fakes.app("anthropic")[STATS]["bodies"][-1]["max_tokens"] == 300


@pytest.mark.asyncio
@pytest.mark.parametrize("provider", sorted(LONG))
@pytest.mark.parametrize("stream", [False, True])
async def test_budget_holds_when_the_upstream_counts_more_prompt_tokens(
    make_gateway: GatewayFactory, fakes: Fakes, tmp_path: Path, provider: str, stream: bool
) -> None:
    # The gateway estimates "tell me a long story" at 11 tokens (cl100k + framing); this
    # upstream counts 40, as a provider with another tokenizer may. The reservation is
    # the estimate times the provider's prompt_reserve_factor, so it still covers it
    # (with the factor at 1.0 the same run serves more than the budget).
    config = config_dict(fakes, tmp_path)
    for settings in config["providers"].values():
        settings["prompt_reserve_factor"] = 4.0
    limit = 10_000
    server = await make_gateway(
        providers=config["providers"],
        budget_a={"max_tokens": limit},
        exact_cache={"enabled": False},
        overflow={"policy": "reject", "max_concurrency": 200},
    )
    model = LONG[provider].replace("long1500", "prompt40-long1500")
    served = await _hundred(server, model, stream, None)
    used_tokens, _ = server.app[GATEWAY].budgets.used("key-a")
    assert used_tokens == served <= limit


@pytest.mark.asyncio
async def test_image_parts_are_reserved(make_gateway: GatewayFactory, fakes: Fakes) -> None:
    # The estimate cannot count an image: each part reserves image_reserve_tokens (1,600
    # by default), so with 2,000 tokens left a request with an image is clamped below 400.
    server = await make_gateway(budget_a={"max_tokens": 2000}, exact_cache={"enabled": False})
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    text = {"type": "text", "text": "what is in this picture"}
    async with client_for(server) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            max_tokens=1000,
            messages=[{"role": "user", "content": [text, image]}],
        )
    assert int(raw.headers["x-spectra-completion-cap"]) < 2000 - 1600
    assert fakes.app("openai")[STATS]["bodies"][-1]["max_tokens"] < 400


def test_prompt_reserve_factor_defaults_by_kind() -> None:
    from ai.config import ProviderConfig

    def factor(kind: str, **extra: Any) -> float:
        return ProviderConfig.model_validate(
            {"kind": kind, "base_url": "http://x", **extra}
        ).reserve_factor

    assert [factor(k) for k in ("openai", "vllm", "anthropic", "bedrock")] == [1.0, 1.0, 1.35, 1.35]
    assert factor("openai", prompt_reserve_factor=1.2) == 1.2
    with pytest.raises(ValueError, match="prompt_reserve_factor"):
        factor("openai", prompt_reserve_factor=0.5)
