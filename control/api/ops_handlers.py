"""Handlers of the operational endpoints outside the document: status, metrics, health,
the OpenAPI document."""

from __future__ import annotations

import ipaddress
from typing import Any

from aiohttp import web

from control.api.bodies import since_param
from control.api.config_handlers import PRINCIPAL
from control.api.errors import ApiError
from control.api.flows import summarize, tail_records
from control.api.history import HISTORY
from control.api.metrics import CONTENT_TYPE
from control.api.openapi import openapi_document
from control.api.state import (
    ALERTS,
    FLOWS,
    METRICS,
    SETTINGS,
    STATUS,
    STORE,
    TOKENS,
    call_store,
    current_tokens,
)
from control.config import SECRET_FIELDS
from control.config.secrets import redact


async def _status_data(request: web.Request) -> tuple[int, dict[str, Any]]:
    head = await call_store(request.app, request.app[STORE].head)
    request.app[METRICS].desired_version = head
    provider = request.app[STATUS]
    data = await call_store(request.app, provider)
    return head, redact(data, SECRET_FIELDS)


async def status(request: web.Request) -> web.Response:
    """Desired version, and per instance what the status provider reports."""
    head, data = await _status_data(request)
    instances = data.get("instances", {})
    for state in instances.values():
        if isinstance(state, dict):
            state["in_sync"] = state.get("applied_version") == head and bool(state.get("converged"))
    return web.json_response({"desired_version": head, **data, "instances": instances})


async def status_history(request: web.Request) -> web.Response:
    """Samples of every instance's counters newer than ``since`` (unix seconds), oldest
    first; the API keeps a bounded window (``window_seconds``)."""
    settings = request.app[SETTINGS]
    return web.json_response(
        {
            "interval_seconds": settings.history_seconds,
            "window_seconds": settings.history_seconds * settings.history_samples,
            "samples": request.app[HISTORY].since(since_param(request)),
        }
    )


async def flows(request: web.Request) -> web.Response:
    """Top talkers and destinations of each instance's flow log (its newest part, read
    bounded) and the newest records naming ``address``."""
    query = request.query
    address = query.get("address") or None
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise ApiError(400, "limit: expected an integer 1..200") from None
    if not 1 <= limit <= 200:
        raise ApiError(400, f"limit={limit}: expected an integer 1..200")
    if address is not None:
        try:
            address = str(ipaddress.ip_address(address))
        except ValueError:
            raise ApiError(400, f"address={address!r}: expected an IP address") from None
    max_bytes = request.app[SETTINGS].flow_read_bytes

    def read() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, path in request.app[FLOWS]().items():
            records, read_bytes, truncated = tail_records(path, max_bytes)
            out[name] = {
                **summarize(records, address, limit),
                "bytes_read": read_bytes,
                "truncated": truncated,
            }
        return out

    return web.json_response(
        {
            "address": address,
            "max_bytes": max_bytes,
            "instances": await call_store(request.app, read),
        }
    )


async def whoami(request: web.Request) -> web.Response:
    """The caller's token name and role (the dashboard hides edit controls for ``read``)."""
    principal = request[PRINCIPAL]
    return web.json_response({"name": principal.name, "role": principal.role})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of the API's counters and every instance's status (404
    while the document's ``metrics.enabled`` is false)."""
    await current_tokens(request.app)
    if not request.app[TOKENS].metrics_enabled:
        raise ApiError(404, "metrics.enabled is false in the config document")
    _head, data = await _status_data(request)
    body = request.app[METRICS].render(data)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def alerts(request: web.Request) -> web.Response:
    """The newest alerts and drops of each instance's inspection engine, newest first."""
    query = request.query
    try:
        limit = int(query.get("limit", "100"))
        sid = int(query["sid"]) if "sid" in query else None
    except ValueError:
        raise ApiError(400, "limit and sid: expected integers (limit 1..1000)") from None
    if not 1 <= limit <= 1000:
        raise ApiError(400, f"limit={limit}: expected an integer 1..1000")
    provider = request.app[ALERTS]
    data = await call_store(request.app, provider, limit, sid)
    return web.json_response(data)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
