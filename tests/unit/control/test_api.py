"""The config API through aiohttp's test client: auth, writes, conflicts, limits, secrets."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient

from control.api import ApiSettings, create_app, hash_token, token_entry
from control.api.auth import TokenError
from control.config import MASK
from control.store import SqliteStore
from tests.promtext import parse, value
from tests.unit.control.conftest import ADMIN_TOKEN, READ_TOKEN, auth, full, minimal

pytestmark = pytest.mark.asyncio

Client = TestClient[web.Request, web.Application]
SECRET = "hunter2-proxy"


def status_provider() -> dict[str, Any]:
    return {
        "instances": {
            "gw-a": {
                "applied_version": 1,
                "converged": True,
                "inspection": {
                    "signatures": {
                        "1001": {"signature": "denied host", "actions": {"alert_blocked": 3}}
                    }
                },
            },
            "gw-b": {"applied_version": 0, "converged": False, "last_error": "nft failed"},
        }
    }


@pytest_asyncio.fixture
async def client(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
    sqlite_store: SqliteStore,
    api_settings: ApiSettings,
) -> Client:
    return await aiohttp_client(create_app(sqlite_store, status_provider, api_settings))


async def put(
    client: Client, document: dict[str, Any], version: int, token: str = ADMIN_TOKEN
) -> Any:
    return await client.put(
        "/v1/config",
        json={"document": document},
        headers={**auth(token), "If-Match": f'"{version}"'},
    )


async def error_of(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    body = await resp.json()
    assert set(body["error"]) == {"code", "message", "details"}
    error: dict[str, Any] = body["error"]
    return error


async def test_health_and_openapi_are_public(client: Client) -> None:
    assert (await (await client.get("/healthz")).json()) == {"status": "ok"}
    spec = await (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    assert "ConfigDocument" in spec["components"]["schemas"]


@pytest.mark.parametrize(
    "header", [None, "Bearer nope", f"Basic {ADMIN_TOKEN}", "Bearer " + "x" * 40]
)
async def test_no_valid_token_is_401(client: Client, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    error = await error_of(await client.get("/v1/config", headers=headers), 401)
    assert error["code"] == "unauthorized"


async def test_read_token_cannot_write(client: Client) -> None:
    error = await error_of(await put(client, minimal(), 0, READ_TOKEN), 403)
    assert "admin" in error["message"]
    assert (await client.get("/v1/config/versions", headers=auth(READ_TOKEN))).status == 200
    body = {"document": minimal()}
    assert (
        await client.post("/v1/config/validate", json=body, headers=auth(READ_TOKEN))
    ).status == 200


async def test_put_get_and_history(client: Client) -> None:
    await error_of(await client.get("/v1/config", headers=auth()), 404)
    resp = await put(client, minimal(), 0)
    assert resp.status == 200 and resp.headers["ETag"] == '"1"'
    assert (await resp.json())["version"] == 1
    resp = await client.get("/v1/config", headers=auth(READ_TOKEN))
    body = await resp.json()
    assert body["version"] == 1 and body["document"]["interfaces"]["inside"] == "inside"
    document = body["document"]
    document["nat"]["port_range"] = [2000, 3000]
    resp = await client.put("/v1/config", json={"version": 1, "document": document}, headers=auth())
    assert (await resp.json())["changes"][0] == {
        "op": "changed",
        "path": "nat.port_range[0]",
        "old": 1024,
        "new": 2000,
    }
    versions = (await (await client.get("/v1/config/versions", headers=auth())).json())["versions"]
    assert [(v["version"], v["actor"]) for v in versions] == [(2, "bootstrap"), (1, "bootstrap")]
    one = await (await client.get("/v1/config/versions/1", headers=auth())).json()
    assert one["document"]["nat"]["port_range"] == [1024, 65535] and one["info"]["version"] == 1
    await error_of(await client.get("/v1/config/versions/9", headers=auth()), 404)


async def test_stale_put_is_409_and_missing_base_is_428(client: Client) -> None:
    await put(client, minimal(), 0)
    await put(client, minimal(), 1)
    error = await error_of(await put(client, minimal(), 1), 409)
    assert error["details"] == {"expected": 1, "current": 2}
    await error_of(
        await client.put("/v1/config", json={"document": minimal()}, headers=auth()), 428
    )
    resp = await client.put(
        "/v1/config",
        json={"document": minimal(), "version": 1},
        headers={**auth(), "If-Match": "2"},
    )
    await error_of(resp, 400)


async def test_invalid_document_is_422_and_nothing_is_stored(
    client: Client, sqlite_store: SqliteStore
) -> None:
    await put(client, minimal(), 0)
    bad = {**minimal(), "nat": {"port_range": [1024, 70000]}, "typo": 1}
    error = await error_of(await put(client, bad, 1), 422)
    by_path = {e["path"]: e for e in error["details"]["errors"]}
    assert by_path["nat.port_range[1]"]["value"] == 70000
    assert "unknown field" in by_path["typo"]["message"]
    assert sqlite_store.head() == 1


async def test_oversized_body_is_413(client: Client) -> None:
    huge = {**minimal(), "pad": "x" * 70_000}
    error = await error_of(await put(client, huge, 0), 413)
    assert error["code"] == "payload_too_large"


async def test_bad_json_is_400(client: Client) -> None:
    resp = await client.put("/v1/config", data=b"{nope", headers={**auth(), "If-Match": "0"})
    await error_of(resp, 400)


async def test_merge_patch(client: Client) -> None:
    await put(client, full(), 0)
    patch = {"nat": {"port_range": [3000, 4000]}, "proxy": {"allowed_domains": None}}
    resp = await client.patch("/v1/config", json=patch, headers={**auth(), "If-Match": '"1"'})
    assert resp.status == 200, await resp.text()
    paths = {c["path"] for c in (await resp.json())["changes"]}
    assert {"nat.port_range[0]", "proxy.allowed_domains[0]"} <= paths
    doc = (await (await client.get("/v1/config", headers=auth())).json())["document"]
    assert doc["nat"]["port_range"] == [3000, 4000] and doc["proxy"]["allowed_domains"] == []
    assert doc["proxy"]["auth"]["users"][0]["password"] == MASK
    await error_of(
        await client.patch("/v1/config", json=patch, headers={**auth(), "If-Match": "1"}), 409
    )
    await error_of(await client.patch("/v1/config", json=patch, headers=auth()), 428)


async def test_masked_secret_sent_back_keeps_the_stored_value(
    client: Client, sqlite_store: SqliteStore
) -> None:
    await put(client, full(), 0)
    document = (await (await client.get("/v1/config", headers=auth())).json())["document"]
    document["logging"]["level"] = "debug"
    resp = await put(client, document, 1)
    assert resp.status == 200, await resp.text()
    stored = sqlite_store.get(2)
    assert stored.proxy.auth.users[0].password.get_secret_value() == SECRET
    document["proxy"]["auth"]["users"].append({"name": "bob", "password": MASK})
    error = await error_of(await put(client, document, 2), 422)
    assert error["details"]["errors"][0]["path"] == "proxy.auth.users[1].password"


async def test_rollback(client: Client) -> None:
    await put(client, minimal(), 0)
    await put(client, {**minimal(), "logging": {"level": "debug"}}, 1)
    resp = await client.post("/v1/config/rollback", json={"to_version": 1}, headers=auth())
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["version"] == 3
    assert body["changes"] == [
        {"op": "changed", "path": "logging.level", "old": "debug", "new": "info"}
    ]
    info = (await (await client.get("/v1/config/versions/3", headers=auth())).json())["info"]
    assert info["rollback_of"] == 1
    await error_of(
        await client.post("/v1/config/rollback", json={"to_version": 9}, headers=auth()), 404
    )
    resp = await client.post(
        "/v1/config/rollback", json={"to_version": 1, "version": 1}, headers=auth()
    )
    await error_of(resp, 409)


async def test_validate_is_a_dry_run(client: Client, sqlite_store: SqliteStore) -> None:
    await put(client, minimal(), 0)
    body = {"document": full(), "outside_addresses": ["203.0.113.2"]}
    result = await (await client.post("/v1/config/validate", json=body, headers=auth())).json()
    assert result["valid"] is True and result["base_version"] == 1
    assert "dnat ip to 10.0.1.10:22" in result["nftables"]
    assert any(c["path"] == "port_forwards[0]" for c in result["changes"])
    bad = {"document": {**minimal(), "nat": {"port_range": [5, 1]}}}
    result = await (await client.post("/v1/config/validate", json=bad, headers=auth())).json()
    assert result["valid"] is False and result["errors"][0]["path"] == "nat.port_range"
    assert sqlite_store.head() == 1


UNSUPPORTED_RULE = 'alert http any any -> any any (msg:"m"; http.method; sid:9001;)'


def _with_rule(rule: str) -> dict[str, Any]:
    return {**minimal(), "inspection": {"enabled": True, "rules": [rule]}}


async def test_a_rule_no_engine_can_run_is_rejected_by_dry_run_and_write(
    client: Client, sqlite_store: SqliteStore
) -> None:
    await put(client, minimal(), 0)
    body = {"document": _with_rule(UNSUPPORTED_RULE)}
    result = await (await client.post("/v1/config/validate", json=body, headers=auth())).json()
    assert result["valid"] is False
    [error] = result["errors"]
    assert error["path"] == "inspection.rules" and "9001" in error["message"]
    error = await error_of(await put(client, _with_rule(UNSUPPORTED_RULE), 1), 422)
    [detail] = error["details"]["errors"]
    assert detail["path"] == "inspection.rules" and "http.method" in detail["message"]
    assert sqlite_store.head() == 1
    good = 'drop tcp any any -> any 25 (msg:"smtp"; sid:9002;)'
    assert (await put(client, _with_rule(good), 1)).status == 200


async def test_status_and_metrics(client: Client) -> None:
    await put(client, minimal(), 0)
    status = await (await client.get("/v1/status", headers=auth(READ_TOKEN))).json()
    assert status["desired_version"] == 1
    assert status["instances"]["gw-a"]["in_sync"] is True
    assert status["instances"]["gw-b"]["in_sync"] is False
    resp = await client.get("/metrics", headers=auth(READ_TOKEN))
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    types, samples = parse(await resp.text())
    assert types["spectra_config_writes"] == "counter"
    assert value(samples, "spectra_config_writes_total", outcome="committed") == 1
    assert value(samples, "spectra_config_applied_version", instance="gw-a") == 1
    assert value(samples, "spectra_config_applied_version", instance="gw-b") == 0
    assert value(samples, "spectra_api_requests_total", method="PUT", route="/v1/config",
                 status="200") == 1  # fmt: skip


async def test_document_tokens_authenticate_and_are_hashed(client: Client) -> None:
    token, entry = token_entry("ci", "read")
    document = {**minimal(), "api": {"tokens": [entry]}}
    assert (await put(client, document, 0)).status == 200
    resp = await client.get("/v1/config", headers=auth(token))
    assert resp.status == 200
    assert token not in await resp.text()
    assert (await resp.json())["document"]["api"]["tokens"][0]["hash"] == MASK
    assert (await put(client, minimal(), 1, token)).status == 403
    with pytest.raises(TokenError):
        hash_token("short")


async def test_secrets_never_in_responses_or_logs(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await put(client, full(), 0)
    texts = [
        await (await client.get(p, headers=auth())).text()
        for p in ("/v1/config", "/v1/config/versions/1", "/v1/config/versions", "/v1/status")
    ]
    bad = full()
    bad["proxy"]["auth"]["users"][0]["extra"] = SECRET
    bad["api"]["tokens"][0]["hash"] = SECRET
    texts.append(await (await put(client, bad, 1)).text())
    changed = full()
    changed["proxy"]["auth"]["users"][0]["password"] = "another-" + SECRET
    texts.append(await (await put(client, changed, 1)).text())
    texts.append(
        await (
            await client.post("/v1/config/validate", json={"document": changed}, headers=auth())
        ).text()
    )
    for text in [*texts, caplog.text]:
        assert SECRET not in text and ADMIN_TOKEN not in text


async def test_a_rule_suricata_refuses_is_rejected_with_its_position(
    client: Client, sqlite_store: SqliteStore
) -> None:
    """engine: suricata: the AWS Network Firewall subset, then the real ``suricata -T``."""
    await put(client, minimal(), 0)
    good = 'drop http any any -> any any (msg:"h"; http.host; content:"x.example"; sid:1;)'

    def doc(*rules: str) -> dict[str, Any]:
        return {**minimal(), "inspection": {"enabled": True, "engine": "suricata",
                                            "rules": list(rules)}}  # fmt: skip

    bad = 'alert http any any -> any any (msg:"m"; http.host; nosuchkw; sid:2;)'
    error = await error_of(await put(client, doc(good, bad), 1), 422)
    [detail] = error["details"]["errors"]
    assert detail["path"] == "inspection.rules[1]"
    assert "rule 2" in detail["message"] and "nosuchkw" in detail["message"]
    nfw = 'alert ip any any -> any any (msg:"m"; geoip:src,RU; sid:3;)'
    error = await error_of(
        await put(client, doc(good, good.replace("sid:1", "sid:4"), nfw), 1), 422
    )
    [detail] = error["details"]["errors"]
    assert detail["path"] == "inspection.rules[2]" and "'geoip'" in detail["message"]
    assert sqlite_store.head() == 1
    assert (await put(client, doc(good), 1)).status == 200


async def test_alerts_endpoint_and_signature_metrics(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
    sqlite_store: SqliteStore,
    api_settings: ApiSettings,
) -> None:
    asked: list[tuple[int, int | None]] = []

    def alerts(limit: int, sid: int | None) -> dict[str, Any]:
        asked.append((limit, sid))
        return {"instances": {"gw-a": {"total": 1, "signatures": {}, "alerts": [{"x": 1}]}}}

    client = await aiohttp_client(create_app(sqlite_store, status_provider, api_settings, alerts))
    resp = await client.get("/v1/alerts?limit=5&sid=1001", headers=auth(READ_TOKEN))
    assert resp.status == 200 and (await resp.json())["instances"]["gw-a"]["total"] == 1
    assert asked == [(5, 1001)]
    await error_of(await client.get("/v1/alerts?limit=0", headers=auth(READ_TOKEN)), 400)
    await error_of(await client.get("/v1/alerts?sid=x", headers=auth(READ_TOKEN)), 400)
    assert (await client.get("/v1/alerts")).status == 401
    text = await (await client.get("/metrics", headers=auth(READ_TOKEN))).text()
    types, samples = parse(text)
    assert types["spectra_inspection_alerts"] == "counter"
    labels = {"instance": "gw-a", "sid": "1001", "action": "alert_blocked"}
    assert value(samples, "spectra_inspection_alerts_total", **labels) == 3
