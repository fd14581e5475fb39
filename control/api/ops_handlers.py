"""Handlers of the operational endpoints outside the document: status, metrics, health,
the OpenAPI document."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from control.api.metrics import CONTENT_TYPE
from control.api.openapi import openapi_document
from control.api.state import METRICS, STATUS, STORE, call_store
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


async def metrics(request: web.Request) -> web.Response:
    _head, data = await _status_data(request)
    gauges: dict[str, float] = {}
    for name, state in data.get("instances", {}).items():
        if isinstance(state, dict) and isinstance(state.get("applied_version"), int):
            gauges[f'spectra_config_applied_version{{instance="{name}"}}'] = state[
                "applied_version"
            ]
        for key, value in (state.get("counters", {}) if isinstance(state, dict) else {}).items():
            if isinstance(value, int | float) and str(key).isidentifier():
                gauges[f'spectra_dataplane_{key}{{instance="{name}"}}'] = value
    text = request.app[METRICS].render(gauges)
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
