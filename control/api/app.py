"""The config API application (aiohttp, :8080): factory, routes, middlewares.

:func:`create_app` builds the app from its parts (a store, a status provider, settings)
and does no I/O; the store's thread pool lives in a ``cleanup_ctx``.  Middlewares, outer
to inner: request metrics, one JSON error shape, store failures as 503, bearer auth, and
waking the local agent after a committed write.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from control.api import ai_handlers as ai
from control.api import aws_handlers as aws
from control.api import config_handlers as cfg
from control.api import ops_handlers as ops
from control.api.ai_history import AI_HISTORY, AiHistory
from control.api.auth import authenticate
from control.api.errors import ApiError, Handler, error_middleware
from control.api.history import HISTORY, StatusHistory, history_ctx, periodic_ctx
from control.api.metrics import ApiMetrics
from control.api.state import (
    ALERTS,
    FLOWS,
    METRICS,
    SETTINGS,
    STATUS,
    STORE,
    TOKENS,
    AlertsProvider,
    ApiSettings,
    FlowFiles,
    StatusProvider,
    TokenCache,
    call_store,
    current_tokens,
    executor_ctx,
)
from control.store.base import ConfigStore, StoreError

PUBLIC = frozenset({"/healthz", "/openapi.json", "/", "/dashboard"})
ASSETS_PREFIX = "/assets/"
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
    path = request.path
    if (
        request.method in WRITES
        and response.status < 300
        and (path in WRITE_PATHS or path.startswith("/v1/ai/keys"))
    ):
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
    if request.path in PUBLIC or request.path.startswith(ASSETS_PREFIX):
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


DASHBOARD = Path(__file__).resolve().parents[1] / "dashboard" / "dist"
NOT_BUILT = (
    "<!doctype html><html lang=en><title>Spectra dashboard</title>"
    "<p>The dashboard's assets are not built here: run <code>make deps</code> "
    "(it builds control/dashboard/app into control/dashboard/dist). "
    "The API itself works: see <a href=/openapi.json>/openapi.json</a>.</p></html>"
)


async def dashboard(request: web.Request) -> web.Response:
    """The dashboard: a single-page app whose every action is a call to this API."""
    index = request.app[DASHBOARD_DIR] / "index.html"
    try:
        body = index.read_bytes()
    except FileNotFoundError:
        return web.Response(text=NOT_BUILT, status=503, content_type="text/html")
    return web.Response(
        body=body,
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-cache", **SECURITY_HEADERS},
    )


async def asset(request: web.Request) -> web.FileResponse:
    """A built asset (content-hashed names: cached for good)."""
    name = request.match_info["name"]
    if not name or "/" in name or name.startswith("."):
        raise ApiError(404, f"no dashboard asset {name!r}")
    path = request.app[DASHBOARD_DIR] / "assets" / name
    if not path.is_file():
        raise ApiError(404, f"no dashboard asset {name!r}")
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=31536000, immutable"})


# the app loads only its own scripts and styles, and talks only to this API
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
DASHBOARD_DIR = web.AppKey("dashboard_dir", Path)


def create_app(
    store: ConfigStore,
    status_provider: StatusProvider,
    settings: ApiSettings | None = None,
    alerts_provider: AlertsProvider | None = None,
    flow_files: FlowFiles | None = None,
) -> web.Application:
    """The config API over ``store``; ``status_provider()`` feeds /v1/status and /metrics,
    ``alerts_provider(limit, sid)`` /v1/alerts (none: every instance reports no alerts),
    ``flow_files()`` the flow log of each instance for /v1/flows (none: no instance)."""
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
    app[FLOWS] = flow_files or dict
    app[SETTINGS] = settings
    app[METRICS] = ApiMetrics()
    app[TOKENS] = TokenCache()
    app[HISTORY] = StatusHistory(settings.history_samples)
    app[AI_HISTORY] = AiHistory(settings.history_samples)
    app[DASHBOARD_DIR] = settings.dashboard_dir or DASHBOARD
    app.cleanup_ctx.append(executor_ctx)
    if settings.history_seconds > 0:
        app.cleanup_ctx.append(history_ctx(status_provider, settings.history_seconds, call_store))
        app.cleanup_ctx.append(
            periodic_ctx(ai.sample_usage, settings.history_seconds, "AI history")
        )
    app.router.add_get("/v1/config", cfg.get_config, allow_head=False)
    app.router.add_put("/v1/config", cfg.put_config)
    app.router.add_patch("/v1/config", cfg.patch_config)
    app.router.add_get("/v1/config/versions", cfg.list_versions, allow_head=False)
    app.router.add_get("/v1/config/versions/{version}", cfg.get_version, allow_head=False)
    app.router.add_post("/v1/config/rollback", cfg.rollback)
    app.router.add_post("/v1/config/validate", cfg.validate)
    app.router.add_post("/v1/aws/changesets", aws.create_changeset)
    app.router.add_get("/v1/ai/usage", ai.usage, allow_head=False)
    app.router.add_get("/v1/ai/usage/history", ai.usage_history, allow_head=False)
    app.router.add_post("/v1/ai/keys", ai.create_key)
    app.router.add_post("/v1/ai/keys/{id}/revoke", ai.revoke_key)
    app.router.add_get("/v1/status", ops.status, allow_head=False)
    app.router.add_get("/v1/status/history", ops.status_history, allow_head=False)
    app.router.add_get("/v1/whoami", ops.whoami, allow_head=False)
    app.router.add_get("/v1/alerts", ops.alerts, allow_head=False)
    app.router.add_get("/v1/flows", ops.flows, allow_head=False)
    app.router.add_get("/metrics", ops.metrics, allow_head=False)
    app.router.add_get("/healthz", ops.healthz, allow_head=False)
    app.router.add_get("/openapi.json", ops.openapi, allow_head=False)
    app.router.add_get("/", dashboard, allow_head=False)
    app.router.add_get("/dashboard", dashboard, allow_head=False)
    app.router.add_get("/assets/{name}", asset, allow_head=False)
    return app
