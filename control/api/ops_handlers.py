"""Handlers of the operational endpoints outside the document: status, metrics, health,
the OpenAPI document."""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from control.api.errors import ApiError
from control.api.metrics import CONTENT_TYPE
from control.api.openapi import openapi_document
from control.api.state import ALERTS, METRICS, STATUS, STORE, call_store
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
        gauges.update(_signature_gauges(name, state))
        gauges.update(_lb_gauges(name, state))
    text = request.app[METRICS].render(gauges)
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


def _signature_gauges(name: str, state: Any) -> dict[str, float]:
    """``spectra_inspection_alerts_total{instance,sid,action}`` from the alert stream."""
    insp = state.get("inspection", {}) if isinstance(state, dict) else {}
    sigs = insp.get("signatures", {}) if isinstance(insp, dict) else {}
    out: dict[str, float] = {}
    for sid, sig in (sigs if isinstance(sigs, dict) else {}).items():
        actions = sig.get("actions", {}) if isinstance(sig, dict) else {}
        for action, count in actions.items():
            if str(sid).isdigit() and str(action).replace("_", "").isalpha():
                label = f'instance="{name}",sid="{sid}",action="{action}"'
                out[f"spectra_inspection_alerts_total{{{label}}}"] = count
    return out


_LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,62}/[0-9.]{7,15}:[0-9]{1,5}$")


def _lb_gauges(name: str, state: Any) -> dict[str, float]:
    """``spectra_lb_backend_healthy{instance,listener,backend}``: 1 healthy or not yet
    checked (in the DNAT map), 0 unhealthy (out of it)."""
    lb = state.get("load_balancer", {}) if isinstance(state, dict) else {}
    listeners = lb.get("listeners", {}) if isinstance(lb, dict) else {}
    out: dict[str, float] = {}
    for listener, entry in (listeners if isinstance(listeners, dict) else {}).items():
        backends = entry.get("backends", {}) if isinstance(entry, dict) else {}
        for key, backend in (backends if isinstance(backends, dict) else {}).items():
            if not (isinstance(backend, dict) and _LABEL_RE.match(f"{listener}/{key}")):
                continue
            label = f'instance="{name}",listener="{listener}",backend="{key}"'
            out[f"spectra_lb_backend_healthy{{{label}}}"] = float(
                backend.get("state") != "unhealthy"
            )
    return out


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
