"""``/v1/ai/...`` of the config API: usage read from the AI gateway's state file, keys
created (the key answered once, its HMAC stored) and revoked as versioned config writes."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient

from ai.keys import hash_key
from ai.state import SCHEMA
from control.api import ApiSettings, create_app
from control.config import parse_document
from control.store import SqliteStore
from tests.unit.control.conftest import ADMIN_TOKEN, READ_TOKEN, auth

pytestmark = pytest.mark.asyncio
Client = TestClient[web.Request, web.Application]
SECRET = "unit-test-key-secret"


@pytest_asyncio.fixture
async def client(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
    sqlite_store: SqliteStore,
    api_settings: ApiSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Client:
    monkeypatch.setenv("SPECTRA_AI_KEY_SECRET", SECRET)
    doc = {
        "interfaces": {"inside": "inside", "outside": "outside"},
        "ai": {"state": {"path": str(tmp_path / "ai-state.sqlite3")}},
    }
    sqlite_store.put(parse_document(doc), 0, "bootstrap")
    return await aiohttp_client(create_app(sqlite_store, lambda: {}, api_settings))


async def _create(client: Client, body: dict[str, Any], version: int = 1) -> Any:
    return await client.post(
        "/v1/ai/keys", json=body, headers={**auth(ADMIN_TOKEN), "If-Match": f'"{version}"'}
    )


async def test_create_answers_the_key_once_and_stores_its_hmac(
    client: Client, sqlite_store: SqliteStore
) -> None:
    resp = await _create(client, {"id": "team-a", "tenant": "a", "budget": {"max_tokens": 500}})
    assert resp.status == 201, await resp.text()
    body = await resp.json()
    assert body["version"] == 2 and resp.headers["ETag"] == '"2"'
    (key,) = sqlite_store.get(2).ai.keys
    assert key.id == "team-a" and key.budget.max_tokens == 500
    assert key.hash == hash_key(SECRET, body["key"])
    assert sqlite_store.versions(1)[0].actor == "bootstrap"
    # the key is nowhere in what the API serves afterwards
    text = await (await client.get("/v1/config", headers=auth())).text()
    assert body["key"] not in text
    # the same id again: 422 naming the field; nothing stored
    again = await _create(client, {"id": "team-a", "tenant": "a"}, 2)
    assert again.status == 422
    (error,) = (await again.json())["error"]["details"]["errors"]
    assert error["path"] == "id" and "exists" in error["message"]
    assert sqlite_store.head() == 2


async def test_create_needs_admin_if_match_and_the_newest_version(
    client: Client, sqlite_store: SqliteStore
) -> None:
    body = {"id": "k", "tenant": "t"}
    read = await client.post(
        "/v1/ai/keys", json=body, headers={**auth(READ_TOKEN), "If-Match": '"1"'}
    )
    assert read.status == 403
    assert (await client.post("/v1/ai/keys", json=body, headers=auth())).status == 428
    assert (await _create(client, body, 7)).status == 409
    assert sqlite_store.head() == 1


async def test_create_without_the_key_secret_is_refused(
    client: Client, sqlite_store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPECTRA_AI_KEY_SECRET")
    resp = await _create(client, {"id": "k", "tenant": "t"})
    assert resp.status == 409
    error = (await resp.json())["error"]
    assert error["code"] == "key_secret_missing" and "SPECTRA_AI_KEY_SECRET" in error["message"]
    assert sqlite_store.head() == 1


async def test_revoke_sets_revoked_as_a_new_version(
    client: Client, sqlite_store: SqliteStore
) -> None:
    assert (await _create(client, {"id": "k1", "tenant": "t"})).status == 201
    resp = await client.post(
        "/v1/ai/keys/k1/revoke", headers={**auth(ADMIN_TOKEN), "If-Match": '"2"'}
    )
    assert resp.status == 200, await resp.text()
    assert sqlite_store.get(3).ai.keys[0].revoked is True
    missing = await client.post(
        "/v1/ai/keys/nope/revoke", headers={**auth(ADMIN_TOKEN), "If-Match": '"3"'}
    )
    assert missing.status == 404 and sqlite_store.head() == 3


async def test_usage_reads_meters_and_budgets_of_the_state_file(
    client: Client, tmp_path: Path
) -> None:
    empty = await (await client.get("/v1/ai/usage", headers=auth(READ_TOKEN))).json()
    assert empty["keys"] == [] and empty["state_file"].endswith("ai-state.sqlite3")
    assert (await _create(client, {"id": "k1", "tenant": "t"})).status == 201
    db = sqlite3.connect(tmp_path / "ai-state.sqlite3")
    db.executescript(SCHEMA)
    db.execute("INSERT INTO budgets (key_id, used_tokens, used_cost) VALUES ('k1', 300, 0.25)")
    db.execute(
        "INSERT INTO meters (key_id, model, requests, prompt_tokens, completion_tokens, "
        "cost_usd) VALUES ('k1', 'gpt-4o-mini', 3, 200, 100, 0.25), "
        "('gone', 'gpt-4o', 1, 1, 1, 0.01)"
    )
    db.commit()
    db.close()
    usage = await (await client.get("/v1/ai/usage", headers=auth(READ_TOKEN))).json()
    (key,) = usage["keys"]
    assert (key["id"], key["used_tokens"], key["used_cost_usd"]) == ("k1", 300, 0.25)
    (model,) = key["models"]
    assert model["model"] == "gpt-4o-mini" and model["requests"] == 3
    assert model["prompt_tokens"] == 200 and model["completion_tokens"] == 100
    assert usage["unknown_keys"] == ["gone"]


async def test_cache_outcomes_and_overflow_from_the_gateways_own_exposition() -> None:
    from ai.metrics import GatewayMetrics
    from control.api.ai_handlers import gateway_counters

    metrics = GatewayMetrics()
    for cache, n in (("hit", 3), ("semantic_hit", 1), ("miss", 6)):
        metrics.requests.labels("chat", "200", "openai", cache).inc(n)
    metrics.requests.labels("chat", "500", "openai", "miss").inc(2)
    metrics.overflow.labels("queue", "queued").inc(4)
    metrics.overflow.labels("queue", "rejected").inc(1)
    metrics.overflow.labels("spill", "spilled").inc(2)
    cache, overflow = gateway_counters(metrics.render().decode())
    assert cache == {"hit": 3, "semantic_hit": 1, "miss": 8}
    assert overflow == {"queue/queued": 4, "queue/rejected": 1, "spill/spilled": 2}


async def test_usage_says_when_there_is_no_gateway(client: Client) -> None:
    usage = await (await client.get("/v1/ai/usage", headers=auth(READ_TOKEN))).json()
    assert usage["gateway"]["reachable"] is False and "ai.routes" in usage["gateway"]["error"]


async def test_usage_history_samples_the_meters_over_time(client: Client, tmp_path: Path) -> None:
    from control.api.ai_handlers import sample_usage

    def history() -> Awaitable[Any]:
        return client.get("/v1/ai/usage/history", headers=auth(READ_TOKEN))

    await sample_usage(client.app)  # no state file, no AI route: nothing to sample
    assert (await (await history()).json())["samples"] == []
    db = sqlite3.connect(tmp_path / "ai-state.sqlite3")
    db.executescript(SCHEMA)
    db.execute(
        "INSERT INTO meters (key_id, model, requests, prompt_tokens, completion_tokens, "
        "cost_usd) VALUES ('k1', 'm-1', 3, 200, 100, 0.25)"
    )
    db.commit()
    await sample_usage(client.app)
    db.execute("UPDATE meters SET requests = 5, prompt_tokens = 260, cost_usd = 0.5")
    db.commit()
    db.close()
    await asyncio.sleep(0.01)  # samples are stamped to the millisecond
    await sample_usage(client.app)
    body = await (await history()).json()
    first, second = body["samples"]
    assert first["t"] <= second["t"]
    meters = {"requests": 3, "prompt_tokens": 200, "completion_tokens": 100, "cost_usd": 0.25}
    assert first["keys"] == {"k1": {"m-1": meters}}
    assert second["keys"]["k1"]["m-1"]["requests"] == 5
    assert second["keys"]["k1"]["m-1"]["cost_usd"] == 0.5
    assert second["overflow"] is None  # no AI gateway to ask
    newer = await client.get(
        "/v1/ai/usage/history", params={"since": str(first["t"])}, headers=auth(READ_TOKEN)
    )
    assert [s["t"] for s in (await newer.json())["samples"]] == [second["t"]]
    bad = await client.get("/v1/ai/usage/history", params={"since": "nan"}, headers=auth())
    assert bad.status == 400 and "since" in (await bad.json())["error"]["message"]
