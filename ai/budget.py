"""Per-key budgets (tokens, cost) and rate limits (requests and tokens per minute).

A request reserves its worst case (estimated prompt + completion cap) *before* the
upstream call and reconciles to the real usage after it. :meth:`Budgets.reserve` never
awaits, so on the event loop the check-and-reserve is atomic: any number of
concurrent requests can never together exceed a budget, provided the completion is
capped at what was reserved (the pipeline passes the cap upstream in the provider's
field) and the upstream counts the prompt within its reservation (the pipeline reserves
the estimate times the provider's ``prompt_reserve_factor``, plus images).
Decisions use the figures in memory; with a :class:`~ai.state.StateStore` every
reservation and reconciliation is also written behind to its SQLite file, so used
totals and the last minute's rate-window use survive a restart. Windows run on the
wall clock, the one a restarted process shares with the file.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ai.config import BudgetConfig, PriceConfig
from ai.errors import BudgetExhausted, BudgetHeld, RateLimited
from ai.state import RATE_WINDOW_S, BudgetDelta, StateStore, WindowRow
from ai.usage import Usage

# Retry-After of a budget held by requests in flight: they settle within their answers.
HELD_RETRY_AFTER_S = 1


def token_refusal(key_id: str, limit: int, *, held: bool) -> BudgetExhausted:
    """The token budget refuses a request: spent (final), or ``held`` by reservations of
    requests in flight (429 with Retry-After: it frees as they settle)."""
    if held:
        return BudgetHeld(
            f"what is left of the token budget of {limit} for key {key_id} is reserved "
            "by requests in flight; retry when they finish",
            retry_after=HELD_RETRY_AFTER_S,
        )
    return BudgetExhausted(f"token budget of {limit} exhausted for key {key_id}")


def cost_refusal(
    key_id: str, limit: float, cost: float, left: float, *, held: bool
) -> BudgetExhausted:
    """The cost budget refuses a request whose worst case (prompt and completion cap)
    costs ``cost``: spent, asking more than is ``left`` (final for that request: a
    smaller max_tokens may fit), or ``held`` by requests in flight (retry)."""
    if held:
        return BudgetHeld(
            f"what is left of the cost budget of {limit} USD for key {key_id} is reserved "
            "by requests in flight; retry when they finish",
            retry_after=HELD_RETRY_AFTER_S,
        )
    if left <= 0:
        return BudgetExhausted(f"cost budget of {limit} USD exhausted for key {key_id}")
    return BudgetExhausted(
        f"this request may cost up to {cost:.6f} USD (its prompt and completion cap) but "
        f"{left:.6f} USD of the cost budget of {limit} USD is left for key {key_id}; "
        "ask for fewer max_tokens"
    )


class Prices:
    """USD prices by model-name pattern; unknown models cost nothing."""

    def __init__(self, prices: tuple[PriceConfig, ...]) -> None:
        self._prices = prices

    def _find(self, model: str) -> PriceConfig | None:
        return next((p for p in self._prices if fnmatch.fnmatchcase(model, p.pattern)), None)

    def cost(self, model: str, usage: Usage) -> float:
        price = self._find(model)
        if price is None:
            return 0.0
        cached_rate = (
            price.input_per_mtok
            if price.cached_input_per_mtok is None
            else price.cached_input_per_mtok
        )
        uncached = usage.prompt_tokens - usage.cached_tokens
        return (
            uncached * price.input_per_mtok
            + usage.cached_tokens * cached_rate
            + usage.completion_tokens * price.output_per_mtok
        ) / 1e6


@dataclass(slots=True)
class _Window:
    at: float
    tokens: int


@dataclass(slots=True)
class _KeyState:
    used_tokens: int = 0
    used_cost: float = 0.0
    reserved_tokens: int = 0
    reserved_cost: float = 0.0
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[_Window] = field(default_factory=deque)


@dataclass(slots=True)
class Reservation:
    """What one request holds until :meth:`Budgets.reconcile`."""

    key_id: str
    tokens: int
    cost: float
    completion_cap: int | None
    window: _Window
    settled: bool = False
    tenant: str = ""
    shared: bool = False  # held in the shared store (``ai.redis_budget``)


class Budgets:
    """Budget and rate-limit state of every key."""

    def __init__(
        self,
        clock: Callable[[], float] | None = None,
        store: StateStore | None = None,
        restored: dict[str, BudgetDelta] | None = None,
        windows: dict[str, list[WindowRow]] | None = None,
    ) -> None:
        self._state: dict[str, _KeyState] = {
            key: _KeyState(used.used_tokens, used.used_cost)
            for key, used in (restored or {}).items()
        }
        self._now = time.time if clock is None else clock
        self._store = store
        now = self._now()
        for key, rows in (windows or {}).items():
            state = self._key(key)
            for second, requests, tokens in rows:  # oldest first
                at = min(second + 1.0, now)  # the end of its second: never expires early
                state.requests.extend([at] * requests)
                state.tokens.append(_Window(at, tokens))

    def _key(self, key_id: str) -> _KeyState:
        return self._state.setdefault(key_id, _KeyState())

    def _expire(self, state: _KeyState, now: float) -> None:
        while state.requests and state.requests[0] <= now - RATE_WINDOW_S:
            state.requests.popleft()
        while state.tokens and state.tokens[0].at <= now - RATE_WINDOW_S:
            state.tokens.popleft()

    def reserve(
        self,
        key_id: str,
        limits: BudgetConfig,
        prompt_tokens: int,
        completion_tokens: int,
        cost: float,
    ) -> Reservation:
        """Reserve or raise 429; the completion cap shrinks to what the budget allows."""
        state, now = self._key(key_id), self._now()
        self._expire(state, now)
        if limits.requests_per_minute is not None and (
            len(state.requests) >= limits.requests_per_minute
        ):
            raise RateLimited(
                f"rate limit of {limits.requests_per_minute} requests per minute reached",
                retry_after=int(RATE_WINDOW_S - (now - state.requests[0])) + 1,
            )
        cap: int | None = completion_tokens
        if limits.max_tokens is not None:
            left = limits.max_tokens - state.used_tokens - prompt_tokens
            if left < 1:
                raise token_refusal(key_id, limits.max_tokens, held=False)
            left -= state.reserved_tokens
            if left < 1:
                raise token_refusal(key_id, limits.max_tokens, held=True)
            cap = min(completion_tokens, left)
        tokens = prompt_tokens + (cap or 0)
        if limits.tokens_per_minute is not None:
            in_window = sum(w.tokens for w in state.tokens)
            if in_window + tokens > limits.tokens_per_minute:
                raise RateLimited(
                    f"rate limit of {limits.tokens_per_minute} tokens per minute reached",
                    retry_after=int(RATE_WINDOW_S - (now - state.tokens[0].at)) + 1
                    if state.tokens
                    else int(RATE_WINDOW_S),
                )
        if limits.max_cost_usd is not None:
            left_usd = limits.max_cost_usd - state.used_cost
            if cost > left_usd or cost > left_usd - state.reserved_cost:
                raise cost_refusal(
                    key_id, limits.max_cost_usd, cost, left_usd, held=cost <= left_usd
                )
        window = _Window(now, tokens)
        state.requests.append(now)
        state.tokens.append(window)
        state.reserved_tokens += tokens
        state.reserved_cost += cost
        if self._store is not None:
            self._store.budget(key_id, BudgetDelta(reserved_tokens=tokens, reserved_cost=cost))
            self._store.window(key_id, int(now), 1, tokens)
        return Reservation(key_id, tokens, cost, cap, window)

    def reconcile(self, reservation: Reservation, usage: Usage | None, cost: float) -> None:
        """Release the reservation and charge what was really used (idempotent)."""
        if reservation.settled:
            return
        reservation.settled = True
        state = self._key(reservation.key_id)
        state.reserved_tokens -= reservation.tokens
        state.reserved_cost -= reservation.cost
        used = usage.total_tokens if usage is not None else 0
        state.used_tokens += used
        state.used_cost += cost
        reservation.window.tokens = used
        if self._store is not None:
            self._store.budget(
                reservation.key_id,
                BudgetDelta(used, cost, -reservation.tokens, -reservation.cost),
            )
            second = int(reservation.window.at)
            self._store.window(reservation.key_id, second, 0, used - reservation.tokens)

    async def acquire(
        self,
        key_id: str,
        tenant: str,
        limits: BudgetConfig,
        prompt_tokens: int,
        completion_tokens: int,
        cost: float,
    ) -> Reservation:
        """:meth:`reserve` as the :class:`~ai.backend.BudgetBackend` protocol has it."""
        return self.reserve(key_id, limits, prompt_tokens, completion_tokens, cost)

    async def settle(self, reservation: Reservation, usage: Usage | None, cost: float) -> None:
        """:meth:`reconcile` as the :class:`~ai.backend.BudgetBackend` protocol has it."""
        self.reconcile(reservation, usage, cost)

    def rate_headers(self, key_id: str, limits: BudgetConfig) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers (limit, remaining, reset of requests and
        tokens per minute) for the key's configured rate limits, as of now."""
        state, now = self._key(key_id), self._now()
        self._expire(state, now)
        headers: dict[str, str] = {}

        def put(kind: str, limit: int, used: int, oldest: float | None) -> None:
            reset = 0.0 if oldest is None else max(0.0, oldest + RATE_WINDOW_S - now)
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, limit - used))
            headers[f"x-ratelimit-reset-{kind}"] = f"{math.ceil(reset)}s"

        if limits.requests_per_minute is not None:
            oldest = state.requests[0] if state.requests else None
            put("requests", limits.requests_per_minute, len(state.requests), oldest)
        if limits.tokens_per_minute is not None:
            oldest = state.tokens[0].at if state.tokens else None
            used = sum(w.tokens for w in state.tokens)
            put("tokens", limits.tokens_per_minute, used, oldest)
        return headers

    def used(self, key_id: str) -> tuple[int, float]:
        state = self._key(key_id)
        return state.used_tokens, state.used_cost
