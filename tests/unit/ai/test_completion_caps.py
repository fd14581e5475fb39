"""Completion caps: a route's ``max_output_tokens`` (the model's limit) sizes the
reservation of a request without ``max_tokens`` and clamps a larger one; a cap below
what the client asked (model limit or budget) is said so (``x-spectra-completion-cap``,
the audit's ``completion_cap``); Anthropic's required ``max_tokens`` reaches every
provider's field; and 100 concurrent ``/v1/messages`` calls (anthropic SDK, stream and
non-stream) never overshoot a token budget."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anthropic
import pytest
from aiohttp.test_utils import TestServer

from ai.server import GATEWAY
from tests.fakes.behavior import STATS
from tests.unit.ai.conftest import (
    Fakes,
    GatewayFactory,
    audit_records,
    client_for,
    config_dict,
)
from tests.unit.ai.test_messages import sdk

ASK: list[Any] = [{"role": "user", "content": "tell me a long story"}]


def _routes(fakes: Fakes, tmp_path: Path, limit: int) -> list[dict[str, Any]]:
    routes: list[dict[str, Any]] = config_dict(fakes, tmp_path)["routes"]
    for route in routes:
        if route["pattern"] == "claude-*":
            route["max_output_tokens"] = limit
    return routes


@pytest.mark.asyncio
async def test_model_limit_sizes_and_clamps(
    make_gateway: GatewayFactory, fakes: Fakes, tmp_path: Path
) -> None:
    server = await make_gateway(routes=_routes(fakes, tmp_path, 50), completion_reserve_tokens=1024)
    async with client_for(server) as c:
        plain = await c.chat.completions.with_raw_response.create(
            model="claude-long1500", messages=ASK
        )
        big = await c.chat.completions.with_raw_response.create(
            model="claude-long1500", messages=ASK, max_tokens=500
        )
        small = await c.chat.completions.with_raw_response.create(
            model="claude-long1500", messages=ASK, max_tokens=20
        )
    sent = [b["max_tokens"] for b in fakes.app("anthropic")[STATS]["bodies"][-3:]]
    assert sent == [50, 50, 20]  # the model's limit, not the 1,024 reserve
    assert "x-spectra-completion-cap" not in plain.headers  # the client asked nothing
    assert big.headers["x-spectra-completion-cap"] == "50"
    assert "x-spectra-completion-cap" not in small.headers
    assert big.parse().usage is not None and big.parse().usage.completion_tokens == 50
    records = await audit_records(server)
    assert [r["completion_cap"] for r in records[-3:]] == [
        {"asked": None, "sent": 50},
        {"asked": 500, "sent": 50},
        {"asked": 20, "sent": 20},
    ]


@pytest.mark.asyncio
async def test_budget_clamp_is_said_on_both_routes(make_gateway: GatewayFactory) -> None:
    """Budget 1,000, answers of 300 tokens, each asking 2,000: both are clamped to what
    is left (and say so); both answers fit, so both are complete."""
    server = await make_gateway(budget_a={"max_tokens": 1000}, exact_cache={"enabled": False})
    async with sdk(server) as a:
        msg = await a.messages.with_raw_response.create(
            model="gpt-long300", max_tokens=2000, messages=ASK
        )
    first = int(msg.headers["x-spectra-completion-cap"])
    assert 900 < first < 1000 and (await msg.parse()).stop_reason == "end_turn"
    async with client_for(server) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-long300", messages=ASK, max_tokens=2000
        )
    second = int(raw.headers["x-spectra-completion-cap"])
    out = raw.parse()
    assert second < first - 300 and out.choices[0].finish_reason == "stop"
    used, _ = server.app[GATEWAY].budgets.used("key-a")
    assert used <= 1000
    records = await audit_records(server)
    assert [r["completion_cap"] for r in records] == [
        {"asked": 2000, "sent": first},
        {"asked": 2000, "sent": second},
    ]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("model", "upstream"),
    [
        ("gpt-4o-mini", "openai"),
        ("claude-sonnet-4", "anthropic"),
        ("bedrock/anthropic.claude", "bedrock"),
        ("local/llama", "local"),
    ],
)
async def test_anthropic_max_tokens_reaches_every_provider(
    gateway: TestServer, fakes: Fakes, model: str, upstream: str
) -> None:
    async with sdk(gateway) as a:
        await a.messages.create(model=model, max_tokens=13, messages=ASK)
    body = fakes.app(upstream)[STATS]["bodies"][-1]
    sent = {
        "openai": lambda: body["max_tokens"],  # the client's field name, kept
        "anthropic": lambda: body["max_tokens"],
        "bedrock": lambda: body["inferenceConfig"]["maxTokens"],
        "local": lambda: body["max_tokens"],
    }[upstream]()
    assert sent == 13


async def _one(client: anthropic.AsyncAnthropic, model: str, stream: bool) -> int:
    if not stream:
        msg = await client.messages.create(model=model, max_tokens=2000, messages=ASK)
    else:
        async with client.messages.stream(model=model, max_tokens=2000, messages=ASK) as s:
            msg = await s.get_final_message()
    return msg.usage.input_tokens + msg.usage.output_tokens


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["gpt-long1500", "claude-long1500"])
async def test_hundred_concurrent_messages_never_overshoot(
    make_gateway: GatewayFactory, model: str, stream: bool
) -> None:
    limit = 10_000
    server = await make_gateway(budget_a={"max_tokens": limit}, exact_cache={"enabled": False})
    async with sdk(server, timeout=60) as client:
        results = await asyncio.gather(
            *(_one(client, model, stream) for _ in range(100)), return_exceptions=True
        )
    ok = [r for r in results if isinstance(r, int)]
    refused = [r for r in results if isinstance(r, anthropic.RateLimitError)]
    assert len(ok) + len(refused) == 100 and ok and refused, results
    used, _ = server.app[GATEWAY].budgets.used("key-a")
    assert used == sum(ok) <= limit
