"""Where the gateway keeps the state instances must agree on: the backend interface.

Two backends (``state.backend``): ``local`` (the default: budgets and rate windows in
memory with their SQLite file, :mod:`ai.state`; the exact cache in its SQLite file,
:mod:`ai.cache`; right for one process) and ``redis`` (budgets, rate windows and the
exact cache in a Redis 7 / Valkey store, e.g. ElastiCache, shared by every instance and
worker: :mod:`ai.redis_budget`, :mod:`ai.redis_cache`; the semantic cache's entries
too, each process keeping its own index in sync: :mod:`ai.redis_semcache`). Metering
stays per process with either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ai.budget import Budgets, Reservation
from ai.cache import ExactCache
from ai.config import AIConfig, BudgetConfig
from ai.redis_budget import RedisBudgets
from ai.redis_cache import RedisExactCache
from ai.redis_link import RedisLink
from ai.state import Loaded, StateStore
from ai.usage import Usage

if TYPE_CHECKING:  # numpy loads with the semantic cache only
    from ai.redis_semcache import RedisSemanticCache
    from ai.semcache.cache import SemanticCacheImpl
    from ai.semcache_api import SemanticCache


class BudgetBackend(Protocol):
    """Reserve before the upstream call, settle after it (``ai.budget`` has the rules)."""

    async def acquire(
        self,
        key_id: str,
        tenant: str,
        limits: BudgetConfig,
        prompt_tokens: int,
        completion_tokens: int,
        cost: float,
    ) -> Reservation: ...

    async def settle(self, reservation: Reservation, usage: Usage | None, cost: float) -> None: ...

    def rate_headers(self, key_id: str, limits: BudgetConfig) -> dict[str, str]: ...

    def used(self, key_id: str) -> tuple[int, float]: ...


class ResponseCache(Protocol):
    """The exact cache: complete responses by canonical key, partitioned by tenant."""

    remote: bool  # a shared store: its first read is sent along with the reservation

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def get(self, key: str, tenant: str) -> dict[str, Any] | None: ...

    async def lookup(self, key: str, tenant: str) -> tuple[dict[str, Any] | None, bool]:
        """A request's first read: :meth:`get`, and on a miss a shared cache may take the
        singleflight lock in the same round trip (True: taken; the caller then leads
        without :meth:`coalesce`, and calls :meth:`release` if it ends up not leading)."""
        ...

    def start_lookup(
        self, key: str, tenant: str
    ) -> asyncio.Future[tuple[dict[str, Any] | None, bool]]:
        """:meth:`lookup` under way (a shared cache sends it at once, so it leaves with
        the budget reservation)."""
        ...

    async def put(self, key: str, tenant: str, value: dict[str, Any]) -> None: ...

    async def coalesce(self, key: str, tenant: str) -> dict[str, Any] | None: ...

    async def release(self, key: str, tenant: str) -> None: ...


class StateBackend(Protocol):
    """Builds the budget backend and the exact cache, and reports its health."""

    name: str

    def budgets(self, store: StateStore, restored: Loaded) -> BudgetBackend: ...

    def cache(self) -> ResponseCache | None: ...

    async def semantic(self, local: SemanticCacheImpl) -> SemanticCache:
        """The semantic cache the gateway uses around this process's index."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def status(self) -> dict[str, Any]: ...


class LocalBackend:
    """SQLite + memory, one process (today's behaviour)."""

    name = "local"

    def __init__(self, config: AIConfig) -> None:
        self._config = config

    def budgets(self, store: StateStore, restored: Loaded) -> BudgetBackend:
        return Budgets(store=store, restored=restored.budgets, windows=restored.windows)

    def cache(self) -> ResponseCache | None:
        exact = self._config.exact_cache
        return ExactCache(exact) if exact.enabled else None

    async def semantic(self, local: SemanticCacheImpl) -> SemanticCache:
        return local

    async def open(self) -> None:
        """Nothing shared to connect to."""

    async def close(self) -> None:
        """Each part closes its own file."""

    def status(self) -> dict[str, Any]:
        return {"backend": "local", "available": True}


class RedisBackend:
    """Budgets, rate windows and the exact cache in a shared Redis / Valkey store."""

    name = "redis"

    def __init__(self, config: AIConfig, env: Mapping[str, str]) -> None:
        assert config.state.redis is not None  # StateConfig's validator
        self._config = config
        self.link = RedisLink(config.state.redis, env)
        self._budgets: RedisBudgets | None = None
        self._semantic: RedisSemanticCache | None = None

    def budgets(self, store: StateStore, restored: Loaded) -> BudgetBackend:
        # the fallback (stance `local`) starts from this process's own figures
        fallback = Budgets(store=store, restored=restored.budgets, windows=restored.windows)
        self._budgets = RedisBudgets(self.link, fallback)
        return self._budgets

    def cache(self) -> ResponseCache | None:
        exact = self._config.exact_cache
        return RedisExactCache(self.link, exact) if exact.enabled else None

    async def semantic(self, local: SemanticCacheImpl) -> SemanticCache:
        from ai.redis_semcache import RedisSemanticCache

        self._semantic = RedisSemanticCache(self.link, local)
        await self._semantic.open()
        return self._semantic

    async def open(self) -> None:
        await self.link.open()

    async def close(self) -> None:
        if self._semantic is not None:
            await self._semantic.close()
        if self._budgets is not None:
            await self._budgets.drain()
        if self._budgets is not None and self._budgets.pending and self.link.available:
            await self._budgets.replay()
        await self.link.close()

    def status(self) -> dict[str, Any]:
        status = self.link.status()
        status["pending_settlements"] = 0 if self._budgets is None else self._budgets.pending
        if self._semantic is not None:
            status["semantic"] = self._semantic.status()
        return status


def state_backend(config: AIConfig, env: Mapping[str, str]) -> StateBackend:
    """The backend ``config.state.backend`` names."""
    if config.state.backend == "redis":
        return RedisBackend(config, env)
    return LocalBackend(config)
