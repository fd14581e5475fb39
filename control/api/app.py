"""The config API application (aiohttp, :8080): factory, routes, middlewares.

:func:`create_app` builds the app from its parts (a store, a status provider, settings)
and does no I/O; the store's thread pool lives in a ``cleanup_ctx``.  Middlewares, outer
to inner: request metrics, one JSON error shape, store failures as 503, bearer auth, and
waking the local agent after a committed write.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from control.api import aws_handlers as aws
from control.api import config_handlers as cfg
from control.api import ops_handlers as ops
from control.api.auth import authenticate
from control.api.errors import ApiError, Handler, error_middleware
from control.api.metrics import ApiMetrics
from control.api.state import (
    ALERTS,
    METRICS,
    SETTINGS,
    STATUS,
    STORE,
    TOKENS,
    AlertsProvider,
    ApiSettings,
    StatusProvider,
    TokenCache,
    current_tokens,
    executor_ctx,
)
from control.store.base import ConfigStore, StoreError

PUBLIC = frozenset({"/healthz", "/openapi.json", "/", "/dashboard"})
READ_ONLY_POSTS = frozenset({"/v1/config/validate"})


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    response = await handler(request)
    request.app[METRICS].requests[(request.method, route, response.status)] += 1
    return response


@web.middleware
async def notify_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """After a committed write, wake the local agent so it converges without waiting for
    its next poll (other instances see the change at their poll)."""
    response = await handler(request)
    if request.method in WRITES and response.status < 300 and request.path in WRITE_PATHS:
        request.app[SETTINGS].on_write()
    return response


WRITES = frozenset({"PUT", "PATCH", "POST"})
WRITE_PATHS = frozenset({"/v1/config", "/v1/config/rollback"})


@web.middleware
async def store_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StoreError as exc:
        raise cfg.handle_store_errors(exc) from None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC:
        return await handler(request)
    principal = authenticate(
        request.headers.get("Authorization"), await current_tokens(request.app)
    )
    if principal is None:
        raise ApiError(
            401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    writes = request.method not in ("GET", "HEAD") and request.path not in READ_ONLY_POSTS
    if writes and principal.role != "admin":
        raise ApiError(
            403, f"token {principal.name!r} has role {principal.role}; writes need admin"
        )
    request[cfg.PRINCIPAL] = principal
    return await handler(request)


DASHBOARD = Path(__file__).resolve().parents[1] / "dashboard" / "index.html"


async def dashboard(request: web.Request) -> web.Response:
    """The dashboard: a static page whose every action is a call to this API."""
    return web.Response(body=DASHBOARD.read_bytes(), content_type="text/html", charset="utf-8")


def create_app(
    store: ConfigStore,
    status_provider: StatusProvider,
    settings: ApiSettings | None = None,
    alerts_provider: AlertsProvider | None = None,
) -> web.Application:
    """The config API over ``store``; ``status_provider()`` feeds /v1/status and /metrics,
    ``alerts_provider(limit, sid)`` /v1/alerts (none: every instance reports no alerts)."""
    settings = settings or ApiSettings()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[
            metrics_middleware,
            error_middleware,
            store_middleware,
            auth_middleware,
            notify_middleware,
        ],
    )
    app[STORE] = store
    app[STATUS] = status_provider
    app[ALERTS] = alerts_provider or (lambda limit, sid: {"instances": {}})
    app[SETTINGS] = settings
    app[METRICS] = ApiMetrics()
    app[TOKENS] = TokenCache()
    app.cleanup_ctx.append(executor_ctx)
    app.router.add_get("/v1/config", cfg.get_config, allow_head=False)
    app.router.add_put("/v1/config", cfg.put_config)
    app.router.add_patch("/v1/config", cfg.patch_config)
    app.router.add_get("/v1/config/versions", cfg.list_versions, allow_head=False)
    app.router.add_get("/v1/config/versions/{version}", cfg.get_version, allow_head=False)
    app.router.add_post("/v1/config/rollback", cfg.rollback)
    app.router.add_post("/v1/config/validate", cfg.validate)
    app.router.add_post("/v1/aws/changesets", aws.create_changeset)
    app.router.add_get("/v1/status", ops.status, allow_head=False)
    app.router.add_get("/v1/alerts", ops.alerts, allow_head=False)
    app.router.add_get("/metrics", ops.metrics, allow_head=False)
    app.router.add_get("/healthz", ops.healthz, allow_head=False)
    app.router.add_get("/openapi.json", ops.openapi, allow_head=False)
    app.router.add_get("/", dashboard, allow_head=False)
    app.router.add_get("/dashboard", dashboard, allow_head=False)
    return app
