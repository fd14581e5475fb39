"""Budgets and rate limits: atomic reservation, reconciliation, no overshoot."""

from __future__ import annotations

import asyncio

import openai
import pytest

from ai.budget import Budgets, Prices
from ai.config import BudgetConfig, PriceConfig
from ai.errors import BudgetExhausted, RateLimited
from ai.server import GATEWAY
from ai.usage import Usage
from tests.unit.ai.conftest import Fakes, GatewayFactory, client_for


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
