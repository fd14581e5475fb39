"""Budgets and metering survive a restart of the gateway (``ai.state``): used totals
and meters come back from the SQLite file, a reservation a dead process never
reconciled is charged in full, the last minute's rate-window use still counts, and
100 concurrent requests still never overshoot a budget across the restart."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import fields
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletion

from ai.budget import Budgets
from ai.config import AuditConfig, BudgetConfig, StateConfig
from ai.errors import RateLimited
from ai.metering import Meter, Metering
from ai.server import GATEWAY
from ai.state import METER_FIELDS, StateStore
from ai.usage import Usage
from tests.unit.ai.conftest import GatewayFactory, client_for


def test_meter_fields_are_the_state_columns() -> None:
    assert tuple(f.name for f in fields(Meter)) == METER_FIELDS


def test_state_file_sits_next_to_the_audit_log(tmp_path: Path) -> None:
    audit = AuditConfig(path=tmp_path / "logs" / "audit.jsonl")
    assert StateConfig().resolved_path(audit) == tmp_path / "logs" / "audit-state.sqlite3"
    assert StateConfig(path=tmp_path / "s.db").resolved_path(audit) == tmp_path / "s.db"
    assert StateConfig().resolved_path(AuditConfig()) is None


@pytest.mark.asyncio
async def test_totals_come_back_and_crash_leftovers_are_charged(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    limits = BudgetConfig(max_tokens=1000)
    store = StateStore(path, write_window_s=0.01)
    budgets = Budgets(store=store, restored=(await store.open()).budgets)
    metering = Metering(store)
    done = budgets.reserve("k", limits, 10, 90, 0.5)
    budgets.reconcile(done, Usage(10, 20), 0.25)
    metering.record("k", "gpt-x", Usage(10, 20, 4, estimated=True), 0.25)
    budgets.reserve("k", limits, 10, 90, 0.5)  # in flight when the process dies
    await asyncio.sleep(0.05)  # written behind within the window, no flush needed
    crashed = sqlite3.connect(path)  # what a SIGKILL leaves: only committed rows
    row = crashed.execute("SELECT used_tokens, reserved_tokens FROM budgets").fetchone()
    crashed.close()
    assert row == (30, 100)

    again = StateStore(path)  # a new process on the same file (the old one never closed)
    loaded = await again.open()
    restarted = Budgets(store=again, restored=loaded.budgets)
    tokens, cost = restarted.used("k")
    assert (tokens, round(cost, 9)) == (130, 0.75)  # the leftover charged in full
    meter = Metering(again, loaded.meters).get("k", "gpt-x")
    assert (meter.requests, meter.prompt_tokens, meter.completion_tokens) == (1, 10, 20)
    assert (meter.cached_tokens, meter.estimated_requests) == (4, 1)
    assert meter.cost_usd == pytest.approx(0.25)
    # the limit counts what came back: 1000 - 130 - 10 prompt leaves 860 to complete
    assert restarted.reserve("k", limits, 10, 5000, 0).completion_cap == 860
    await again.close()
    await store.close()


@pytest.mark.asyncio
async def test_a_clean_stop_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = StateStore(path, write_window_s=1.0)  # nothing written before close
    budgets = Budgets(store=store, restored=(await store.open()).budgets)
    for _ in range(50):
        budgets.reconcile(budgets.reserve("k", BudgetConfig(), 1, 1, 0.0), Usage(1, 1), 0.0)
    await store.close()
    reopened = StateStore(path)
    assert (await reopened.open()).budgets["k"].used_tokens == 100
    await reopened.close()


@pytest.mark.asyncio
async def test_rate_windows_survive_a_crash_within_their_minute(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    limits = BudgetConfig(requests_per_minute=3, tokens_per_minute=100)
    store = StateStore(path, write_window_s=0.01)
    budgets = Budgets(store=store, restored=(await store.open()).budgets)
    budgets.reconcile(budgets.reserve("k", limits, 10, 40, 0), Usage(10, 20), 0)  # 30
    budgets.reserve("k", limits, 10, 40, 0)  # 50, in flight when the process dies
    await asyncio.sleep(0.05)  # written behind; the process never closes the store

    again = StateStore(path)
    loaded = await again.open()
    restarted = Budgets(store=again, restored=loaded.budgets, windows=loaded.windows)
    with pytest.raises(RateLimited, match="100 tokens per minute"):
        restarted.reserve("k", limits, 10, 20, 0)  # 30 + 50 + 30 > 100
    restarted.reserve("k", limits, 10, 10, 0)  # 100: fits exactly
    with pytest.raises(RateLimited, match="3 requests per minute") as refused:
        restarted.reserve("k", limits, 1, 1, 0)
    assert 0 < refused.value.retry_after <= 61  # type: ignore[operator]
    await again.close()
    await store.close()


@pytest.mark.asyncio
async def test_window_rows_older_than_a_minute_do_not_count_and_are_pruned(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state.sqlite3"
    store = StateStore(path)
    await store.open()
    await store.close()
    now = int(time.time())
    db = sqlite3.connect(path)
    rows = [("k", now - 90, 5, 500), ("k", now - 500, 5, 500)]
    db.executemany("INSERT INTO windows VALUES (?, ?, ?, ?)", rows)
    db.commit()
    db.close()

    again = StateStore(path)
    loaded = await again.open()
    assert loaded.windows == {}
    budgets = Budgets(store=again, restored=loaded.budgets, windows=loaded.windows)
    budgets.reserve("k", BudgetConfig(requests_per_minute=1, tokens_per_minute=10), 1, 1, 0)
    await again.close()
    db = sqlite3.connect(path)
    kept = db.execute("SELECT second, requests FROM windows ORDER BY second").fetchall()
    db.close()
    assert kept[0][0] == now - 90  # within two windows: kept, not counted
    assert kept[1:] and all(s >= now for s, _ in kept[1:])  # now - 500 is gone


async def _burst(client: openai.AsyncOpenAI, tag: str) -> list[ChatCompletion | BaseException]:
    return await asyncio.gather(
        *(
            client.chat.completions.create(
                model="gpt-4o-mini",
                max_tokens=8,
                messages=[{"role": "user", "content": f"{tag} request {i} with a few words"}],
            )
            for i in range(100)
        ),
        return_exceptions=True,
    )


@pytest.mark.asyncio
async def test_budget_holds_across_a_restart_under_concurrency(
    make_gateway: GatewayFactory,
) -> None:
    limit = 600
    settings = {"budget_a": {"max_tokens": limit}, "exact_cache": {"enabled": False}}
    first = await make_gateway(**settings)
    async with client_for(first, timeout=30) as c:
        before = await _burst(c, "first")
    used_before, cost_before = first.app[GATEWAY].budgets.used("key-a")
    meter_before = first.app[GATEWAY].metering.get("key-a", "gpt-4o-mini")
    await first.close()  # a clean stop: everything is committed
    assert 0 < used_before <= limit
    assert any(isinstance(r, openai.RateLimitError) for r in before)

    second = await make_gateway(**settings)
    gw = second.app[GATEWAY]
    used, cost = gw.budgets.used("key-a")
    assert (used, round(cost, 12)) == (used_before, round(cost_before, 12))
    assert gw.metering.get("key-a", "gpt-4o-mini") == meter_before
    async with client_for(second, timeout=30) as c:
        after = await _burst(c, "second")
    ok = [r for r in after if isinstance(r, ChatCompletion)]
    assert all(isinstance(r, openai.RateLimitError) for r in after if r not in ok)
    used_after, _ = gw.budgets.used("key-a")
    reported = sum(r.usage.total_tokens for r in ok if r.usage is not None)
    assert used_after == used_before + reported <= limit
    assert gw.metering.get("key-a", "gpt-4o-mini").requests == meter_before.requests + len(ok)


@pytest.mark.asyncio
async def test_requests_per_minute_hold_across_a_gateway_restart(
    make_gateway: GatewayFactory,
) -> None:
    settings = {"budget_a": {"requests_per_minute": 2}, "exact_cache": {"enabled": False}}
    first = await make_gateway(**settings)
    async with client_for(first) as c:
        for i in range(2):
            await c.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": f"before {i}"}]
            )
    await first.close()
    second = await make_gateway(**settings)
    async with client_for(second) as c:
        with pytest.raises(openai.RateLimitError, match="2 requests per minute"):
            await c.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "after"}]
            )
