"""Typed application state of the config API (``web.AppKey``) and the store bridge.

Stores are synchronous; :func:`call_store` runs them on the app's own thread pool
(created and shut down by a ``cleanup_ctx``) so the event loop never blocks on SQLite
or SSM.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from aiohttp import web

from control.api.metrics import ApiMetrics
from control.aws.changeset import ChangeSetStager
from control.config.document import ConfigDocument
from control.config.operations import ApiToken
from control.store.base import ConfigStore, VersionNotFound

P = ParamSpec("P")
T = TypeVar("T")

StatusProvider = Callable[[], dict[str, Any]]
AlertsProvider = Callable[[int, int | None], dict[str, Any]]  # (limit, sid) -> per instance
FlowFiles = Callable[[], dict[str, Path]]  # instance -> its flow log (GET /v1/flows)


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """How the API behaves apart from the document: bootstrap tokens and limits."""

    extra_tokens: tuple[ApiToken, ...] = ()
    token_refresh_seconds: float = 5.0
    max_body_bytes: int = 1_048_576
    store_threads: int = 4
    on_write: Callable[[], None] = lambda: None  # called after each committed write
    # the change-set stager for a document (POST /v1/aws/changesets); None: no AWS here
    changesets: Callable[[ConfigDocument], ChangeSetStager] | None = None
    # /v1/status/history: sample the status every history_seconds (0: never), keep
    # history_samples of them (the default: 30 minutes)
    history_seconds: float = 2.0
    history_samples: int = 900
    flow_read_bytes: int = 4 << 20  # GET /v1/flows reads at most this of each flow log
    dashboard_dir: Path | None = None  # the built dashboard [default: control/dashboard/dist]


@dataclass(slots=True)
class TokenCache:
    """Tokens (and ``metrics.enabled``) of the newest document, re-read at most every
    ``refresh`` seconds."""

    version: int = -1
    tokens: tuple[ApiToken, ...] = ()
    metrics_enabled: bool = True
    fetched_at: float = field(default=-1e9)


STORE = web.AppKey("store", ConfigStore)
STATUS: web.AppKey[StatusProvider] = web.AppKey("status_provider")
ALERTS: web.AppKey[AlertsProvider] = web.AppKey("alerts_provider")
FLOWS: web.AppKey[FlowFiles] = web.AppKey("flow_files")
SETTINGS = web.AppKey("settings", ApiSettings)
METRICS = web.AppKey("metrics", ApiMetrics)
TOKENS = web.AppKey("tokens", TokenCache)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)


async def executor_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the thread pool store calls run on."""
    pool = ThreadPoolExecutor(app[SETTINGS].store_threads, thread_name_prefix="spectra-store")
    app[EXECUTOR] = pool
    yield
    pool.shutdown(wait=True, cancel_futures=True)


async def call_store(
    app: web.Application, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """Run a store method on the app's thread pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(app[EXECUTOR], lambda: fn(*args, **kwargs))


async def current_tokens(app: web.Application, force: bool = False) -> Sequence[ApiToken]:
    """Bootstrap tokens plus those of the newest document (cached briefly)."""
    cache = app[TOKENS]
    settings = app[SETTINGS]
    if force or time.monotonic() - cache.fetched_at > settings.token_refresh_seconds:
        store = app[STORE]
        head = await call_store(app, store.head)
        if head != cache.version:
            try:
                doc = await call_store(app, store.get, head) if head else None
            except VersionNotFound:
                doc = None
            cache.tokens = tuple(doc.api.tokens) if doc else ()
            cache.metrics_enabled = doc.metrics.enabled if doc else True
            cache.version = head
        app[METRICS].desired_version = head
        cache.fetched_at = time.monotonic()
    return (*settings.extra_tokens, *cache.tokens)
