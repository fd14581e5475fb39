"""``/v1/ai/...``: the AI gateway's usage and keys, as the config API sees them.

Usage (``GET /v1/ai/usage``) is read from the AI gateway's state file (SQLite, the
meters and budgets it persists: :mod:`ai.state`), opened read-only, next to each key's
budget from the document. Keys are part of the document (``ai.keys``, hashed): creating
one (``POST /v1/ai/keys``) draws a random key, stores only its HMAC under the
document's ``ai.key_secret`` (which this process must be able to read, as the AI
gateway it runs does) and answers the key itself once; revoking one
(``POST /v1/ai/keys/{id}/revoke``) sets ``revoked``. Both are config writes like any
other: ``If-Match`` with the base version (409 when someone wrote meanwhile), validated,
versioned with who did it, and converged by every instance.
"""

from __future__ import annotations

import re
import time
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from ai.config import AIConfig
from ai.keys import SecretMissing, hash_key, new_key, resolve_secret
from ai.state import read_usage
from control.api.ai_history import AI_HISTORY
from control.api.bodies import check_object, etag, json_body, since_param
from control.api.config_handlers import edit_document
from control.api.errors import ApiError
from control.api.state import SETTINGS, STORE, call_store
from control.config import ConfigDocument, FieldError
from control.store.base import VersionNotFound

KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


async def _latest(request: web.Request) -> tuple[int, ConfigDocument]:
    try:
        latest: tuple[int, ConfigDocument] = await call_store(
            request.app, request.app[STORE].latest
        )
    except VersionNotFound:
        raise ApiError(404, "no config document has been written yet") from None
    return latest


def gateway_counters(exposition: str) -> tuple[dict[str, int], dict[str, int]]:
    """(requests by cache outcome: ``hit`` exact, ``semantic_hit``, ``miss``,
    ``coalesced``, ``skip``; overflow decisions by ``policy/decision``) from the AI
    gateway's Prometheus exposition."""
    cache: dict[str, int] = {}
    overflow: dict[str, int] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == "spectra_ai_requests_total":
                outcome = sample.labels.get("cache", "")
                cache[outcome] = cache.get(outcome, 0) + int(sample.value)
            elif sample.name == "spectra_ai_overflow_decisions_total":
                name = f"{sample.labels.get('policy', '')}/{sample.labels.get('decision', '')}"
                overflow[name] = overflow.get(name, 0) + int(sample.value)
    return cache, overflow


async def gateway_metrics(listen_port: int) -> dict[str, Any]:
    """The local AI gateway's requests by cache outcome, its hit rates and its overflow
    decisions, read from its ``/metrics`` on loopback (1 s at most); unreachable: said
    so."""
    url = f"http://127.0.0.1:{listen_port}/metrics"
    try:
        timeout = aiohttp.ClientTimeout(total=1.0)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
            if resp.status != 200:
                return {"reachable": False, "error": f"{url}: HTTP {resp.status}"}
            outcomes, overflow = gateway_counters(await resp.text())
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"reachable": False, "error": f"{url}: {type(exc).__name__}"}
    total = sum(outcomes.values())
    return {
        "reachable": True,
        "requests_by_cache": outcomes,
        "exact_hit_rate": outcomes.get("hit", 0) / total if total else None,
        "semantic_hit_rate": outcomes.get("semantic_hit", 0) / total if total else None,
        "overflow_decisions": overflow,
    }


async def _gateway(ai: AIConfig) -> dict[str, Any]:
    if ai.routes and ai.listen_port:
        return await gateway_metrics(ai.listen_port)
    return {"reachable": False, "error": "no AI gateway in the document (ai.routes)"}


async def sample_usage(app: web.Application) -> None:
    """One sample of the AI gateway's usage into the app's :data:`AI_HISTORY` (a
    periodic tick): nothing while there is no document or no AI gateway in it."""
    try:
        _version, doc = await call_store(app, app[STORE].latest)
    except VersionNotFound:
        return
    path = doc.ai.state.resolved_path(doc.ai.audit)
    if not doc.ai.routes and (path is None or not path.is_file()):
        return
    _budgets, meters = await call_store(app, read_usage, path)
    gateway = await _gateway(doc.ai)
    overflow = gateway.get("overflow_decisions") if gateway["reachable"] else None
    app[AI_HISTORY].sample(meters, overflow, time.time())


async def usage_history(request: web.Request) -> web.Response:
    """Samples of requests, tokens and cost per key and model and of the overflow
    decisions newer than ``since`` (unix seconds), oldest first."""
    settings = request.app[SETTINGS]
    return web.json_response(
        {
            "interval_seconds": settings.history_seconds,
            "window_seconds": settings.history_seconds * settings.history_samples,
            "samples": request.app[AI_HISTORY].since(since_param(request)),
        }
    )


async def usage(request: web.Request) -> web.Response:
    """Requests, tokens and cost per key and model; budget use against each key's limits;
    the local gateway's cache hit rates."""
    version, doc = await _latest(request)
    ai = doc.ai
    path = ai.state.resolved_path(ai.audit)
    budgets, meters = await call_store(request.app, read_usage, path)
    gateway = await _gateway(ai)
    keys = [
        {
            "id": key.id,
            "tenant": key.tenant,
            "revoked": key.revoked,
            "budget": key.budget.model_dump(),
            **budgets.get(key.id, {"used_tokens": 0, "used_cost_usd": 0.0}),
            "models": meters.get(key.id, []),
        }
        for key in ai.keys
    ]
    known = {k.id for k in ai.keys}
    return web.json_response(
        {
            "version": version,
            "state_file": None if path is None else str(path),
            "keys": keys,
            "unknown_keys": sorted((set(meters) | set(budgets)) - known),
            "gateway": gateway,
        }
    )


async def create_key(request: web.Request) -> web.Response:
    body = await json_body(request)
    check_object(body, {"id": str, "tenant": str, "budget": dict}, {"id", "tenant"})
    key_id, tenant = body["id"], body["tenant"]
    key = new_key()

    def add(base: ConfigDocument, data: dict[str, Any]) -> None:
        errors = []
        if not KEY_ID.match(key_id):
            errors.append(
                FieldError(
                    path="id",
                    value=key_id,
                    message="expected 1-64 of A-Z a-z 0-9 _ . - (starting alphanumeric)",
                )
            )
        if any(k.id == key_id for k in base.ai.keys):
            errors.append(
                FieldError(
                    path="id",
                    value=key_id,
                    message="a key with this id exists; revoke it or choose another id",
                )
            )
        if not tenant.strip():
            errors.append(FieldError(path="tenant", value=tenant, message="expected a tenant name"))
        if errors:
            raise ApiError(422, "invalid request body", {"errors": errors})
        try:
            secret = resolve_secret(base.ai.key_secret)
        except SecretMissing as exc:
            raise ApiError(
                409,
                f"cannot hash a new key: ai.key_secret: {exc} in the config API's process",
                code="key_secret_missing",
            ) from None
        entry: dict[str, Any] = {"id": key_id, "tenant": tenant, "hash": hash_key(secret, key)}
        if "budget" in body:
            entry["budget"] = body["budget"]
        ai = data.setdefault("ai", {})
        ai["keys"] = [*ai.get("keys", []), entry]

    version, changes = await edit_document(request, add)
    return web.json_response(
        {"version": version, "id": key_id, "key": key, "changes": changes},
        status=201,
        headers=etag(version),
    )


async def revoke_key(request: web.Request) -> web.Response:
    key_id = request.match_info["id"]

    def revoke(base: ConfigDocument, data: dict[str, Any]) -> None:
        for entry in data.get("ai", {}).get("keys", []):
            if entry.get("id") == key_id:
                entry["revoked"] = True
                return
        raise ApiError(404, f"no AI key {key_id!r} in the document")

    version, changes = await edit_document(request, revoke)
    return web.json_response({"version": version, "changes": changes}, headers=etag(version))
