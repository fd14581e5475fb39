"""The gateway's connection to a shared Redis 7 / Valkey store, and its availability.

One asyncio client (redis-py; ``RedisCluster`` for a cluster-mode endpoint) speaking
RESP with AUTH (a password or token, with an RBAC user name, as ElastiCache's
in-transit encryption and AUTH/RBAC use them: https://docs.aws.amazon.com/AmazonElastiCache/latest/dg/auth.html)
over TLS when asked. The per-request commands (the budget and cache scripts, cache
reads) go through :meth:`RedisLink.script` (or :meth:`RedisLink.send`: queued at once,
the reply a future, for writes behind an answer) and :meth:`RedisLink.command`, which use the
lean pipelined client of :mod:`ai.resp` (one connection, deadlines kept by the
connection, no pool and no timer object per call; a cluster-mode endpoint uses
redis-py there too); everything else (the semantic cache's stream, admin) goes
through :meth:`RedisLink.call` on redis-py. Either way no call waits on the store past
``op_timeout_s``.

A failed call marks the link down; while down, calls fail at once (no request waits on
a dead store) until the next retry, one at a time, after an exponential backoff (100 ms
doubling up to ``backoff_max_s``); a background probe PINGs on the same schedule, so
the link comes back without traffic. Each feature decides what "unavailable" means for
it (``on_unavailable``). Keys are laid out ``<prefix>:{t<hash of tenant>}:<kind>:<id>``:
the hash tag keeps a tenant's keys in one cluster slot, so the Lua scripts that touch
several of them are cluster-safe (https://redis.io/docs/latest/operate/oss_and_stack/reference/cluster-spec/#hash-tags).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Mapping
from typing import Any, TypeVar

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Connection, Redis, SSLConnection
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ai.config import RedisConfig
from ai.errors import Overloaded
from ai.keys import resolve_secret
from ai.offpath import OffPath
from ai.resp import Arg, Endpoint, RespClient, Script, is_noscript

log = logging.getLogger("spectra.ai")
T = TypeVar("T")
BACKOFF_MIN_S = 0.1
RETRY_AFTER_S = 1


class StoreUnavailable(Overloaded):
    """503: the shared store is unreachable and the feature's stance is `reject`."""


Reply = asyncio.Future[Any]


def _copy(into: Reply, done: asyncio.Future[Any]) -> None:
    """``done``'s outcome into ``into`` (unless its waiter went away)."""
    if done.cancelled():
        into.cancel()
    elif (exc := done.exception()) is not None:
        if not into.done():
            into.set_exception(exc)
    elif not into.done():
        into.set_result(done.result())


def _client(config: RedisConfig, env: Mapping[str, str]) -> Any:
    """A client whose calls wait (within ``op_timeout_s``) for one of at most
    ``max_connections`` pooled connections, retrying once on a connection that died
    (a restarted or failed-over store) before the link counts the store as down."""
    password = resolve_secret(config.password, env) if config.password is not None else None
    common: dict[str, Any] = {
        "host": config.host,
        "port": config.port,
        "username": config.username,
        "password": password,
        "socket_timeout": config.op_timeout_s,
        "socket_connect_timeout": config.connect_timeout_s,
        "decode_responses": True,
    }
    tls: dict[str, Any] = {}
    if config.tls and config.tls_ca_file is not None:
        tls["ssl_ca_certs"] = str(config.tls_ca_file)
    if config.cluster:
        return RedisCluster(ssl=config.tls, max_connections=config.max_connections, **common, **tls)
    pool = BlockingConnectionPool(
        max_connections=config.max_connections,
        timeout=config.op_timeout_s,
        connection_class=SSLConnection if config.tls else Connection,
        db=config.db,
        retry=Retry(NoBackoff(), 1),
        **common,
        **tls,
    )
    return Redis.from_pool(pool)  # owns the pool: closing the client closes it


def _lean(config: RedisConfig, env: Mapping[str, str]) -> RespClient | None:
    """The hot path's client (None for a cluster-mode endpoint: redis-py follows its
    redirections)."""
    if config.cluster:
        return None
    password = resolve_secret(config.password, env) if config.password is not None else None
    ca = str(config.tls_ca_file) if config.tls_ca_file is not None else None
    return RespClient(
        Endpoint(
            config.host,
            config.port,
            config.username,
            password,
            config.db,
            config.tls,
            ca,
            config.connect_timeout_s,
            config.op_timeout_s,
        )
    )


class RedisLink:
    """The clients, the store's up/down state and the reconnect backoff."""

    def __init__(self, config: RedisConfig, env: Mapping[str, str]) -> None:
        self.config = config
        self.client = _client(config, env)
        self.lean = _lean(config, env)
        self._scripts: dict[str, Any] = {}  # sha -> redis-py Script (cluster mode)
        self._tags: dict[str, str] = {}
        self.available = True
        self.failures = 0  # calls failed or refused while down, since start
        self.last_error: str | None = None
        self.down_since: float | None = None
        self._backoff = BACKOFF_MIN_S
        self._retry_at = 0.0
        self._probing = False
        self._probe: asyncio.Task[None] | None = None
        self._on_up: list[Callable[[], Awaitable[None]]] = []

    def key(self, tenant: str, kind: str, name: str) -> str:
        tag = self._tags.get(tenant)
        if tag is None:
            if len(self._tags) >= 10_000:  # bounded: tenants are keys, few in practice
                self._tags.clear()
            tag = self._tags[tenant] = hashlib.sha256(tenant.encode()).hexdigest()[:16]
        return f"{self.config.key_prefix}:{{t{tag}}}:{kind}:{name}"

    async def after(self, key: Hashable, behind: OffPath) -> None:
        """Until a command sent now runs after ``behind``'s writes of ``key``: on the
        lean client's one connection (the store runs a connection's commands in order)
        once they are sent; on redis-py's pool once they are done."""
        if self.lean is not None:
            await behind.issued(key)
        else:
            await behind.wait(key)

    def on_up(self, callback: Callable[[], Awaitable[None]]) -> None:
        """``callback`` runs after the link comes back (e.g. replaying settlements)."""
        self._on_up.append(callback)

    async def open(self) -> None:
        """Start the probe; a store down at start is only logged (the stance applies)."""
        self._probe = asyncio.create_task(self._probe_loop(), name="spectra-ai-redis-probe")
        with contextlib.suppress(StoreUnavailable):
            await self.ping()

    async def ping(self) -> None:
        if self.lean is not None:
            await self.command("ping", "PING")
        else:
            await self.call(lambda: self.client.ping(), "ping")

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self.lean is not None:
            await self.lean.close()
        with contextlib.suppress(Exception):
            await self.client.aclose()

    def _admit(self) -> bool:
        """Whether this call is the one retry of a down store (StoreUnavailable if the
        store is down and it is not time to retry)."""
        if self.available:
            return False
        if self._probing or time.monotonic() < self._retry_at:
            self.failures += 1
            raise StoreUnavailable(
                f"the shared state store is unreachable ({self.last_error})",
                retry_after=RETRY_AFTER_S,
            )
        self._probing = True  # one call at a time tries a down store
        return True

    def _unreachable(self, what: str, exc: BaseException) -> StoreUnavailable:
        self._down(f"{what}: {type(exc).__name__}: {exc}".rstrip(": "))
        return StoreUnavailable(
            f"the shared state store is unreachable ({self.last_error})",
            retry_after=RETRY_AFTER_S,
        )

    async def call(self, fn: Callable[[], Awaitable[T]], what: str) -> T:
        """``fn()`` (a redis-py call) bounded by ``op_timeout_s``;
        :class:`StoreUnavailable` if the store is down (at once, between retries) or
        the call fails."""
        return await self._guarded(self._bounded(fn), what)

    async def _bounded(self, fn: Callable[[], Awaitable[T]]) -> T:
        async with asyncio.timeout(self.config.op_timeout_s):  # no task per call
            return await fn()

    async def command(self, what: str, *args: Arg) -> Any:
        """One command on the hot path's client (redis-py's generic
        ``execute_command`` in cluster mode), with :meth:`call`'s stance."""
        lean = self.lean
        if lean is None:
            return await self.call(lambda: self.client.execute_command(*args), what)
        return await self._guarded(lean.execute(*args), what)

    def send(self, script: Script, keys: list[str], args: list[str], what: str) -> Reply | None:
        """The script sent now, its reply (or :class:`StoreUnavailable`) to come in the
        returned future: no task and no coroutine per call, so a write sent behind an
        answer costs a few microseconds and is on the wire (in order) when this returns.
        None when it cannot be sent at once (cluster mode, no open connection, the
        store down): :meth:`script` then connects, or applies the stance."""
        lean = self.lean
        if lean is None or not self.available:
            return None
        sent = lean.send_evalsha(script, keys, args)
        if sent is None:
            return None
        reply: Reply = asyncio.get_running_loop().create_future()
        sent.add_done_callback(functools.partial(self._landed, reply, script, keys, args, what))
        return reply

    def _landed(
        self,
        reply: Reply,
        script: Script,
        keys: list[str],
        args: list[str],
        what: str,
        sent: asyncio.Future[Any],
    ) -> None:
        exc = sent.exception()
        if exc is None:
            if not reply.done():
                reply.set_result(sent.result())
            return
        if is_noscript(exc) and self.lean is not None:  # flushed: sent whole
            again = asyncio.ensure_future(self._guarded(self.lean.eval(script, keys, args), what))
            again.add_done_callback(functools.partial(_copy, reply))
            return
        if isinstance(exc, (OSError, TimeoutError)):  # ConnectionError is an OSError
            exc = self._unreachable(what, exc)
        if not reply.done():
            reply.set_exception(exc)

    async def script(self, script: Script, keys: list[str], args: list[str], what: str) -> Any:
        """Run a Lua script (EVALSHA, loading it when the store lacks it), with
        :meth:`call`'s stance."""
        sent = self.send(script, keys, args, what)
        if sent is not None:
            return await sent
        lean = self.lean
        if lean is None:
            registered = self._scripts.get(script.sha)
            if registered is None:
                registered = self._scripts[script.sha] = self.client.register_script(script.body)
            return await self.call(lambda: registered(keys=keys, args=args), what)
        return await self._guarded(lean.evalsha(script, keys, args), what)

    async def _guarded(self, reply: Coroutine[Any, Any, T], what: str) -> T:
        """``reply`` (bounded by ``op_timeout_s``: the lean client keeps it itself) with
        the stance: refused at once while the store is down, a failure marks it down.
        An error reply (redis-py's ``ResponseError``, the lean client's
        :class:`~ai.resp.ReplyError`) is the store's answer: a bug, raised as is."""
        try:
            probing = self._admit()
        except StoreUnavailable:
            reply.close()  # never started
            raise
        try:
            result = await reply
        except (redis_errors.RedisError, OSError, TimeoutError) as exc:  # not ReplyError
            if type(exc) is redis_errors.ResponseError:
                raise
            raise self._unreachable(what, exc) from None
        finally:
            if probing:  # also when the caller was cancelled
                self._probing = False
        if not self.available:
            await self._up()
        return result

    def _down(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        now = time.monotonic()
        if self.available:
            log.warning("shared state store unreachable: %s", error)
            self.available, self.down_since = False, time.time()
            self._backoff = BACKOFF_MIN_S
        else:
            self._backoff = min(self._backoff * 2, self.config.backoff_max_s)
        self._retry_at = now + self._backoff

    async def _up(self) -> None:
        log.warning("shared state store reachable again after %.1f s", self.down_for())
        self.available, self.down_since, self._backoff = True, None, BACKOFF_MIN_S
        for callback in self._on_up:
            try:
                await callback()
            except Exception as exc:  # one callback must not stop the rest
                log.error("after reconnect: %s", exc)

    def down_for(self) -> float:
        return 0.0 if self.down_since is None else time.time() - self.down_since

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self._backoff, 1.0))
            if not self.available and time.monotonic() >= self._retry_at:
                with contextlib.suppress(StoreUnavailable):
                    await self.ping()

    def status(self) -> dict[str, Any]:
        stance = self.config.on_unavailable
        return {
            "backend": "redis",
            "endpoint": f"{self.config.host}:{self.config.port}",
            "available": self.available,
            "down_for_s": round(self.down_for(), 3),
            "failures": self.failures,
            "last_error": self.last_error,
            "on_unavailable": {"budgets": stance.budgets, "cache": stance.cache},
        }
