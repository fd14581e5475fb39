"""The aiohttp application of the AI gateway (:8090) and its process entry point.

``create_app(config)`` builds the app; resources (HTTP client session, caches, audit
writer) live in a ``cleanup_ctx``; handlers turn domain errors into OpenAI-shaped
HTTP errors (Anthropic-shaped on ``/v1/messages``, ``ai.messages``) and audit every
request, failures included. Nothing runs at import.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ai.audit import AuditLog, NullAudit, audit_key
from ai.backend import StateBackend, state_backend
from ai.config import AIConfig
from ai.embeddings import embeddings
from ai.errors import BadRequest, GatewayError, PayloadTooLarge
from ai.keys import KeyStore, Principal, check_not_revoked, resolve_secret
from ai.logsetup import ENV_FORMAT, ENV_LEVEL, configure
from ai.messages import parse_messages
from ai.messages_wire import AnthropicShape, error_body
from ai.metrics import CONTENT_TYPE, GatewayMetrics
from ai.pipeline import COMPLETION_CAP, Gateway
from ai.providers.base import AwsCredentialSource
from ai.providers.bedrock import DefaultCredentialChain
from ai.reload import FileSource, Source, watch
from ai.routing import Router
from ai.schema import parse_chat, parse_embedding
from ai.semcache_api import SemanticCache
from ai.state import StateStore
from ai.tokens import count_text
from ai.trace import Trace
from ai.workers import LOCAL_REASON, Supervisor, for_worker, worker_count

log = logging.getLogger("spectra.ai")

CONFIG = web.AppKey("config", AIConfig)
GATEWAY = web.AppKey("gateway", Gateway)
BACKEND = web.AppKey("state_backend", StateBackend)  # its status(): /v1/spectra/state
METRICS = web.AppKey("metrics", GatewayMetrics)
REQUEST_ID = web.RequestKey("request_id", str)  # the audit record's, sent as x-request-id
CLIENT_REQUEST_ID = "x-client-request-id"  # OpenAI's header for the client's own id
CLIENT_ID = web.RequestKey("client_request_id", str)  # a valid one, echoed
CLIENT_REQUEST_ID_MAX = 512
PRINCIPAL = web.RequestKey("principal", Principal)  # whose rate limits the headers show
_READ = 256 * 1024  # bytes per body read


def error_response(exc: GatewayError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status, headers=exc.headers())


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, read until the end of the stream (one ``read`` returns only what
    has arrived so far), holding at most ``limit`` + one read; over it: 413, with or
    without a Content-Length (a chunked body is counted as it arrives)."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"request body of {request.content_length} bytes exceeds the limit of {limit} bytes"
        )
    body = bytearray()
    while piece := await request.content.read(min(_READ, limit + 1 - len(body))):
        body += piece
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return bytes(body)


async def read_json(request: web.Request, limit: int) -> Any:
    body = await read_body(request, limit)
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"request body is not valid JSON: {exc.msg} at position {exc.pos}"
        ) from None
    except ValueError:
        raise BadRequest("request body is not valid UTF-8 JSON") from None


def _bearer(request: web.Request) -> str | None:
    return request.headers.get("Authorization")


def _anthropic_credential(request: web.Request) -> str | None:
    """Anthropic's SDK sends ``x-api-key``; ``Authorization: Bearer`` works too."""
    key = request.headers.get("x-api-key")
    return f"Bearer {key}" if key else request.headers.get("Authorization")


def anthropic_error(exc: GatewayError) -> web.Response:
    return web.json_response(error_body(exc), status=exc.status, headers=exc.headers())


def _authenticate(
    request: web.Request,
    gw: Gateway,
    trace: Trace,
    credential: Callable[[web.Request], str | None] = _bearer,
) -> Principal:
    """The request's principal, named in ``trace`` even when revoked (then 403)."""
    principal = gw.keys.identify(credential(request))
    trace.key_id, trace.key_hash, trace.tenant = (
        principal.key_id,
        principal.key_hash,
        principal.tenant,
    )
    check_not_revoked(principal)
    request[PRINCIPAL] = principal
    trace.mark("auth")
    return principal


Handler = Callable[
    [web.Request, Gateway, Principal, dict[str, Any], Trace], Awaitable[web.StreamResponse]
]


def _endpoint(
    name: str,
    parse: Callable[[Any, web.Request], dict[str, Any]],
    run: Handler,
    *,
    render: Callable[[GatewayError], web.Response] = error_response,
    credential: Callable[[web.Request], str | None] = _bearer,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """``parse`` validates the body (and the headers that shape it) after
    authentication, so the audit names the key of a bad request."""

    async def handler(request: web.Request) -> web.StreamResponse:
        gw, trace = request.app[GATEWAY], Trace(name)
        request[REQUEST_ID] = trace.request_id
        try:
            trace.client_request_id = client_request_id(request)
            if (request.content_length or 0) > gw.config.max_body_bytes:
                await read_json(request, gw.config.max_body_bytes)
            principal = _authenticate(request, gw, trace, credential)
            body = parse(await read_json(request, gw.config.max_body_bytes), request)
            return await run(request, gw, principal, body, trace)
        except GatewayError as exc:
            trace.fail(exc)
            return render(exc)
        finally:
            await gw.write_audit(trace)
            request.app[METRICS].observe(trace)

    return handler


async def _chat(
    request: web.Request, gw: Gateway, principal: Principal, body: dict[str, Any], trace: Trace
) -> web.StreamResponse:
    return await gw.chat(request, principal, body, trace)


async def _messages(
    request: web.Request, gw: Gateway, principal: Principal, body: dict[str, Any], trace: Trace
) -> web.StreamResponse:
    return await gw.chat(request, principal, body, trace, AnthropicShape)


async def _embeddings(
    request: web.Request, gw: Gateway, principal: Principal, body: dict[str, Any], trace: Trace
) -> web.StreamResponse:
    return await embeddings(gw, principal, body, trace)


async def models(request: web.Request) -> web.StreamResponse:
    """The listed models; audited like every other call."""
    gw, trace = request.app[GATEWAY], Trace("models")
    request[REQUEST_ID] = trace.request_id
    try:
        trace.client_request_id = client_request_id(request)
        _authenticate(request, gw, trace)
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": provider}
            for m, provider in gw.router.listed()
        ]
        trace.commit = "completed"
        return web.json_response({"object": "list", "data": data})
    except GatewayError as exc:
        trace.fail(exc)
        return error_response(exc)
    finally:
        await gw.write_audit(trace)
        request.app[METRICS].observe(trace)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition of the gateway's counters and latency histograms."""
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def client_request_id(request: web.Request) -> str | None:
    """The client's own request id (``x-client-request-id``, as OpenAI accepts it):
    recorded in the audit and echoed; 1-512 printable ASCII characters."""
    value = request.headers.get(CLIENT_REQUEST_ID)
    if value is None:
        return None
    if not 0 < len(value) <= CLIENT_REQUEST_ID_MAX or not all(" " < c <= "~" for c in value):
        raise BadRequest(
            f"header {CLIENT_REQUEST_ID} must be 1-{CLIENT_REQUEST_ID_MAX} printable ASCII "
            "characters without spaces",
            param=CLIENT_REQUEST_ID,
        )
    request[CLIENT_ID] = value
    return value


async def _client_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer, errors and streams included, names its audit record (OpenAI's
    ``x-request-id``, which its SDK exposes as the response's request id; also as
    Anthropic's ``request-id`` on ``/v1/messages``), echoes the client's own
    ``x-client-request-id``, and, for a key
    with rate limits, shows them as OpenAI's ``x-ratelimit-*`` headers; a completion
    cap below the client's own ``max_tokens`` is named in ``x-spectra-completion-cap``."""
    if REQUEST_ID in request:
        response.headers["x-request-id"] = request[REQUEST_ID]
        if request.path == "/v1/messages":  # Anthropic's name, which its SDK reads
            response.headers["request-id"] = request[REQUEST_ID]
    if CLIENT_ID in request:
        response.headers[CLIENT_REQUEST_ID] = request[CLIENT_ID]
    if COMPLETION_CAP in request:
        response.headers["x-spectra-completion-cap"] = str(request[COMPLETION_CAP])
    if PRINCIPAL in request:
        principal = request[PRINCIPAL]
        budgets = request.app[GATEWAY].budgets
        response.headers.update(budgets.rate_headers(principal.key_id, principal.budget))


async def state_status(request: web.Request) -> web.StreamResponse:
    """The state backend's health (``ai.backend``): which one, reachable or not since
        when, failed calls, each feature's stance while it is not, and the answering
    process (one of the workers). Names no tenant or key."""
    return web.json_response({**request.app[BACKEND].status(), "pid": os.getpid()})


def _resources(
    config: AIConfig,
    env: Mapping[str, str],
    semcache: SemanticCache | None,
    keys: KeyStore,
    source: Source | None,
    reload_s: float,
    aws: AwsCredentialSource,
    anchor_aws: AwsCredentialSource | None,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        backend = state_backend(config, env)
        app[BACKEND] = backend
        cache = backend.cache()
        audit: AuditLog | NullAudit = (
            AuditLog(config.audit, audit_key(config.audit, env), anchor_aws)
            if config.audit.path is not None
            else NullAudit()
        )
        state = StateStore(config.state.resolved_path(config.audit), config.state.write_window_s)
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=True
        )
        owned: Any = None  # a semantic cache this app created (and must close)
        watcher: asyncio.Task[None] | None = None
        try:
            await backend.open()
            if cache is not None:
                await cache.open()
            await audit.start()
            restored = await state.open()
            await asyncio.to_thread(count_text, "load the encoding now, not on a request")
            sem = semcache
            settings = config.semantic_cache.resolved_settings(config.exact_cache)
            if sem is None and settings is not None and settings.enabled:
                from ai.semcache import create_semantic_cache

                if backend.name == "redis":  # the shared store replaces the SQLite file
                    settings = settings.model_copy(update={"path": None})
                # off the loop: restoring persisted entries reads SQLite
                owned = await asyncio.to_thread(create_semantic_cache, settings)
                await owned.warm_up()  # load the model now, not on the first request
                sem = await backend.semantic(owned)
            router, budgets = Router(config, env, aws), backend.budgets(state, restored)
            gateway = Gateway(
                config, router, session, cache, sem, audit, state, restored, keys, budgets
            )
            app[GATEWAY] = gateway
            if source is not None:
                watcher = asyncio.create_task(
                    watch(gateway, source, env, reload_s, aws), name="spectra-ai-reload"
                )
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await state.close()
            await audit.close()
            if cache is not None:
                await cache.close()
            await backend.close()
            if owned is not None:
                owned.close()
            await session.close()

    return ctx


def create_app(
    config: AIConfig,
    *,
    env: Mapping[str, str] | None = None,
    semantic_cache: SemanticCache | None = None,
    source: Source | None = None,
    reload_s: float = 1.0,
    aws_credentials: AwsCredentialSource | None = None,
    anchor_credentials: AwsCredentialSource | None = None,
    serve_metrics: bool = True,
) -> web.Application:
    """The gateway app; ``env`` resolves secret references (default: os.environ).

    ``aws_credentials`` signs Bedrock requests whose provider config names no keys: the
    appliance passes its operational role's; by default botocore's default chain
    (:class:`~ai.providers.bedrock.DefaultCredentialChain`), resolved once.
    ``anchor_credentials`` writes the audit anchors to S3 (``audit.anchor_s3``): the
    appliance passes its role for ``s3``; by default botocore's own chain.

    With ``source`` (a callable returning the current ``ai`` section) a changed
    section is applied while running, checked every ``reload_s`` (``ai.reload``).
    ``serve_metrics`` (the document's ``metrics.enabled``) adds ``GET /metrics``."""
    env = dict(os.environ) if env is None else env
    app = web.Application(client_max_size=config.max_body_bytes + 1)
    app[CONFIG] = config
    app[METRICS] = GatewayMetrics()
    keys = KeyStore(resolve_secret(config.key_secret, env), config.keys)
    aws = aws_credentials or DefaultCredentialChain()
    app.on_response_prepare.append(_client_headers)
    app.cleanup_ctx.append(
        _resources(config, env, semantic_cache, keys, source, reload_s, aws, anchor_credentials)
    )
    app.router.add_post(
        "/v1/chat/completions", _endpoint("chat", lambda raw, _: parse_chat(raw), _chat)
    )
    app.router.add_post(
        "/v1/messages",
        _endpoint(
            "messages",
            lambda raw, r: parse_messages(raw, r.headers.get("anthropic-version")),
            _messages,
            render=anthropic_error,
            credential=_anthropic_credential,
        ),
    )
    app.router.add_post(
        "/v1/embeddings", _endpoint("embeddings", lambda raw, _: parse_embedding(raw), _embeddings)
    )
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/spectra/state", state_status)
    if serve_metrics:
        app.router.add_get("/metrics", metrics, allow_head=False)
    return app


def load_config(path: Path, state_backend: str | None = None) -> AIConfig:
    """The AI section from a JSON file: either the section itself or a whole appliance
    document that holds it under ``ai``; ``state_backend`` overrides ``state.backend``."""
    data = json.loads(path.read_bytes())
    if isinstance(data, dict) and isinstance(data.get("ai"), dict):
        data = data["ai"]
    if state_backend is not None and isinstance(data, dict):
        data = {**data, "state": {**(data.get("state") or {}), "backend": state_backend}}
    return AIConfig.model_validate(data)


def _logging_of(path: Path) -> tuple[str, str]:
    """(level, format) of a whole document's ``logging`` section; else the environment's
    (``SPECTRA_LOG_LEVEL``, ``SPECTRA_LOG_FORMAT``), else info and JSON lines."""
    data = json.loads(path.read_bytes())
    section = data.get("logging") if isinstance(data, dict) else None
    section = section if isinstance(section, dict) else {}
    return (
        str(section.get("level", os.environ.get(ENV_LEVEL, "info"))),
        str(section.get("format", os.environ.get(ENV_FORMAT, "json"))),
    )


def main(argv: list[str] | None = None) -> None:
    """Run the gateway from a JSON config file (the ``ai`` section of the document).

    Bedrock providers sign with the keys their config names, else with botocore's
    default credential chain (environment, shared files, container or instance role)."""
    parser = argparse.ArgumentParser(prog="python -m ai", description=main.__doc__)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument(
        "--state-backend",
        choices=("local", "redis"),
        default=None,
        help="overrides state.backend (redis needs state.redis in the config)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes on the port (SO_REUSEPORT); default: one per core with "
        "state.backend redis; always 1 with local",
    )
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configure(*_logging_of(args.config))
    index = args.worker

    def load(path: Path) -> AIConfig:
        config = load_config(path, args.state_backend)
        return config if index is None else for_worker(config, index)

    source = FileSource(args.config, load)
    config = source()
    if index is None:
        try:
            count = worker_count(config, args.workers)
        except ValueError as exc:
            parser.error(str(exc))
        if count > 1:
            passed = ["--config", str(args.config)]
            for flag, value in (
                ("--host", args.host),
                ("--port", args.port),
                ("--state-backend", args.state_backend),
            ):
                passed += [] if value is None else [flag, str(value)]
            sys.exit(Supervisor(passed, count).run())
        if config.state.backend == "local":
            log.info("one process: %s", LOCAL_REASON)
    web.run_app(
        create_app(config, source=source),
        host=args.host or config.listen_host,
        port=config.listen_port if args.port is None else args.port,
        reuse_port=index is not None,
        print=None,
        access_log=None,
    )
