"""Budgets and rate limits shared by every gateway instance through Redis.

The same rules as :class:`ai.budget.Budgets` (reserve the worst case before the
upstream call, reconcile to the real usage after it), but decided inside Redis by two
Lua scripts (https://redis.io/docs/latest/develop/interact/programmability/eval-intro/),
registered once and run with EVALSHA: a script runs atomically, so any number of
requests on any number of instances can never together pass a budget (the same
guarantee one event loop gives the local backend). Both keys a script touches carry the
tenant's hash tag (cluster-safe). The clock is the store's (``TIME``), shared by all.

A key's figures: hash ``budget:<key id>`` (used/reserved tokens and cost) and hash
``rate:<key id>`` (requests ``r:<second>`` and tokens ``t:<second>`` of the last
minute and their running sums; a reservation drops the seconds that left the window,
each once, so its cost does not grow with the traffic; the hash expires after two
idle minutes).
A reservation of an instance that dies before reconciling stays charged (never given
back). A settlement is sent behind the answer (:class:`~ai.offpath.OffPath`): until
it lands the reservation stays charged, and a reservation of a key with settlements
of this instance in flight waits for them first (what they give back changes the
decision and the completion cap; over the lean client's one connection, which the
store executes in order, only for them to be sent), so a sequential client sees the
decisions of inline settlements. A key with no limits at
all never touches the store. Unreachable store:
stance ``reject`` -> 503, ``local`` -> a per-process
:class:`~ai.budget.Budgets` until it returns; settlements that fail are kept (bounded)
and replayed when it does.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ai.budget import Budgets, Reservation, _Window, cost_refusal, token_refusal
from ai.config import BudgetConfig
from ai.errors import RateLimited
from ai.offpath import OffPath
from ai.redis_link import RedisLink, StoreUnavailable
from ai.resp import Script
from ai.state import RATE_WINDOW_S
from ai.usage import Usage

# KEYS: budget hash, window hash. ARGV: rpm, tpm, max_tokens, max_cost ("" = none),
# prompt tokens, completion tokens, cost, window seconds. The window hash holds
# r:<second> / t:<second> (requests and tokens of that second), R / T (their sums over
# the seconds still in the window), lo (the oldest second not yet expired, none older
# has fields) and hi (the newest second with fields): a reservation expires the seconds
# from lo on that left the window (each second once, so O(1) amortized and at most
# window + 1 of them; the whole hash when hi left it), instead of summing every field.
RESERVE = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])
local max_tokens, max_cost = tonumber(ARGV[3]), tonumber(ARGV[4])
local prompt, completion, cost = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local window = tonumber(ARGV[8])
local w = redis.call('HMGET', KEYS[2], 'R', 'T', 'lo', 'hi')
local reqs, toks = tonumber(w[1]) or 0, tonumber(w[2]) or 0
local lo, hi = tonumber(w[3]), tonumber(w[4])
if hi and hi + 1 <= now - window then
  redis.call('DEL', KEYS[2])
  reqs, toks, lo, hi = 0, 0, nil, nil
elseif lo then
  local from = lo
  while lo <= hi do
    local f = redis.call('HMGET', KEYS[2], 'r:' .. lo, 't:' .. lo)
    if f[1] then
      if lo + 1 > now - window then break end
      reqs, toks = reqs - tonumber(f[1]), toks - (tonumber(f[2]) or 0)
      redis.call('HDEL', KEYS[2], 'r:' .. lo, 't:' .. lo)
    end
    lo = lo + 1
  end
  if lo ~= from then redis.call('HSET', KEYS[2], 'R', reqs, 'T', toks, 'lo', lo) end
end
local oldest = nil
if lo and lo <= hi then oldest = lo end
local function retry()
  if oldest == nil then return tostring(window) end
  return tostring(math.floor(window - (now - oldest)) + 1)
end
if rpm and reqs >= rpm then return {1, retry()} end
local b = redis.call('HMGET', KEYS[1], 'used_tokens', 'reserved_tokens', 'used_cost',
  'reserved_cost')
local ut, rt = tonumber(b[1]) or 0, tonumber(b[2]) or 0
local uc, rc = tonumber(b[3]) or 0, tonumber(b[4]) or 0
local cap = completion
if max_tokens then
  local left = max_tokens - ut - prompt
  if left < 1 then return {3, '0'} end
  left = left - rt
  if left < 1 then return {5, '0'} end
  if left < cap then cap = left end
end
local tokens = prompt + cap
if tpm and toks + tokens > tpm then return {2, retry()} end
if max_cost then
  local left = max_cost - uc
  if cost > left then return {4, tostring(left)} end
  if cost > left - rc then return {6, tostring(left)} end
end
local sec = math.floor(now)
redis.call('HINCRBY', KEYS[2], 'r:' .. sec, 1)
redis.call('HINCRBY', KEYS[2], 't:' .. sec, tokens)
redis.call('HSET', KEYS[2], 'R', reqs + 1, 'T', toks + tokens, 'lo', oldest or sec, 'hi', sec)
redis.call('EXPIRE', KEYS[2], window * 2)
redis.call('HINCRBY', KEYS[1], 'reserved_tokens', tokens)
redis.call('HINCRBYFLOAT', KEYS[1], 'reserved_cost', ARGV[7])
return {0, tostring(cap), tostring(tokens), tostring(sec), tostring(reqs + 1),
  tostring(toks + tokens), tostring(oldest or sec), tostring(ut), tostring(uc)}
""")

# KEYS: budget hash, window hash. ARGV: reserved tokens, reserved cost, used tokens,
# used cost, the reservation's second, window seconds.
SETTLE = Script("""
redis.call('HINCRBY', KEYS[1], 'reserved_tokens', -tonumber(ARGV[1]))
redis.call('HINCRBYFLOAT', KEYS[1], 'reserved_cost', -tonumber(ARGV[2]))
local ut = redis.call('HINCRBY', KEYS[1], 'used_tokens', tonumber(ARGV[3]))
local uc = redis.call('HINCRBYFLOAT', KEYS[1], 'used_cost', ARGV[4])
local t = redis.call('TIME')
local sec, window = tonumber(ARGV[5]), tonumber(ARGV[6])
if sec + 1 > tonumber(t[1]) - window then
  local delta = tonumber(ARGV[3]) - tonumber(ARGV[1])
  redis.call('HINCRBY', KEYS[2], 't:' .. sec, delta)
  redis.call('HINCRBY', KEYS[2], 'T', delta)
end
return {tostring(ut), tostring(uc)}
""")

# Refusal codes of RESERVE: 1, 2 rate limits (reply[1]: Retry-After); 3 token budget
# spent, 5 held by requests in flight; 4 cost budget spent or asked beyond what is left,
# 6 held (reply[1]: USD left).
_RATE = {1: "requests", 2: "tokens"}
log = logging.getLogger("spectra.ai")


def _unlimited(limits: BudgetConfig) -> bool:
    """No limit at all (a field by field test: pydantic's ``==`` costs microseconds)."""
    return (
        limits.max_tokens is None
        and limits.max_cost_usd is None
        and limits.requests_per_minute is None
        and limits.tokens_per_minute is None
    )


@dataclass(frozen=True, slots=True)
class _Seen:
    """A key's rate-window use as the last script saw it (for the response headers)."""

    requests: int
    tokens: int
    oldest: float
    used_tokens: int
    used_cost: float


def _opt(value: float | None) -> str:
    return "" if value is None else repr(value)


class RedisBudgets:
    """The :class:`~ai.backend.BudgetBackend` over a :class:`RedisLink`."""

    def __init__(self, link: RedisLink, fallback: Budgets, max_pending: int = 100_000) -> None:
        self._link = link
        self._fallback = fallback
        self._seen: dict[str, _Seen] = {}
        self._pending: deque[tuple[list[str], list[str]]] = deque(maxlen=max_pending)
        self._behind = OffPath("budget settlement")
        link.on_up(self.replay)

    def _keys(self, key_id: str, tenant: str) -> list[str]:
        return [self._link.key(tenant, "budget", key_id), self._link.key(tenant, "rate", key_id)]

    async def acquire(
        self,
        key_id: str,
        tenant: str,
        limits: BudgetConfig,
        prompt_tokens: int,
        completion_tokens: int,
        cost: float,
    ) -> Reservation:
        if _unlimited(limits):  # nothing to enforce, nothing to share
            reservation = self._fallback.reserve(
                key_id, limits, prompt_tokens, completion_tokens, cost
            )
            reservation.tenant = tenant
            return reservation
        args = [
            _opt(limits.requests_per_minute),
            _opt(limits.tokens_per_minute),
            _opt(limits.max_tokens),
            _opt(limits.max_cost_usd),
            str(prompt_tokens),
            str(completion_tokens),
            repr(cost),
            str(int(RATE_WINDOW_S)),
        ]
        keys = self._keys(key_id, tenant)
        if self._behind.pending((key_id, tenant)):
            await self._link.after((key_id, tenant), self._behind)
        try:
            reply = await self._link.script(RESERVE, keys, args, "reserve")
        except StoreUnavailable:
            if self._link.config.on_unavailable.budgets == "reject":
                raise
            reservation = self._fallback.reserve(
                key_id, limits, prompt_tokens, completion_tokens, cost
            )
            reservation.tenant = tenant
            return reservation
        code = int(reply[0])
        if code in _RATE:
            limit = limits.requests_per_minute if code == 1 else limits.tokens_per_minute
            raise RateLimited(
                f"rate limit of {limit} {_RATE[code]} per minute reached",
                retry_after=max(1, int(reply[1])),
            )
        if code in (3, 5):
            assert limits.max_tokens is not None
            raise token_refusal(key_id, limits.max_tokens, held=code == 5)
        if code in (4, 6):
            assert limits.max_cost_usd is not None
            left = float(reply[1])
            raise cost_refusal(key_id, limits.max_cost_usd, cost, left, held=code == 6)
        cap, tokens, second = int(reply[1]), int(reply[2]), int(reply[3])
        self._seen[key_id] = _Seen(
            int(reply[4]), int(reply[5]), float(reply[6]), int(reply[7]), float(reply[8])
        )
        return Reservation(
            key_id, tokens, cost, cap, _Window(float(second), tokens), tenant=tenant, shared=True
        )

    async def settle(self, reservation: Reservation, usage: Usage | None, cost: float) -> None:
        if reservation.settled:
            return
        if not reservation.shared:
            self._fallback.reconcile(reservation, usage, cost)
            return
        reservation.settled = True
        used = usage.total_tokens if usage is not None else 0
        keys = self._keys(reservation.key_id, reservation.tenant)
        args = [
            str(reservation.tokens),
            repr(reservation.cost),
            str(used),
            repr(cost),
            str(int(reservation.window.at)),
            str(int(RATE_WINDOW_S)),
        ]
        key = (reservation.key_id, reservation.tenant)
        sent = self._link.send(SETTLE, keys, args, "settle")
        if sent is None:  # not at once: a task connects (or keeps it for the replay)
            await self._behind.submit(key, self._send_settlement(keys, args))
        else:
            await self._behind.track(key, sent, functools.partial(self._landed, keys, args))

    def _landed(self, keys: list[str], args: list[str], sent: asyncio.Future[Any]) -> None:
        exc = None if sent.cancelled() else sent.exception()
        if isinstance(exc, StoreUnavailable):
            self._pending.append((keys, args))  # charged meanwhile: the reservation stands
        elif exc is not None:
            log.error("budget settlement failed: %s", exc)

    async def drain(self) -> None:
        """Until every settlement sent behind an answer has landed (or is pending)."""
        await self._behind.drain()

    async def _send_settlement(self, keys: list[str], args: list[str]) -> None:
        try:
            await self._link.script(SETTLE, keys, args, "settle")
        except StoreUnavailable:
            self._pending.append((keys, args))  # charged meanwhile: the reservation stands

    async def replay(self) -> None:
        """Send the settlements that failed while the store was down."""
        while self._pending:
            keys, args = self._pending.popleft()
            await self._send_settlement(keys, args)
            if not self._link.available:
                return

    @property
    def pending(self) -> int:
        return len(self._pending)

    def rate_headers(self, key_id: str, limits: BudgetConfig) -> dict[str, str]:
        """OpenAI's ``x-ratelimit-*`` headers as of this instance's last reservation for
        the key (the shared window's figures the script returned)."""
        seen = self._seen.get(key_id)
        if seen is None:
            return self._fallback.rate_headers(key_id, limits)
        headers: dict[str, str] = {}
        reset = math.ceil(max(0.0, seen.oldest + 1 + RATE_WINDOW_S - time.time()))
        for kind, limit, used in (
            ("requests", limits.requests_per_minute, seen.requests),
            ("tokens", limits.tokens_per_minute, seen.tokens),
        ):
            if limit is not None:
                headers[f"x-ratelimit-limit-{kind}"] = str(limit)
                headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, limit - used))
                headers[f"x-ratelimit-reset-{kind}"] = f"{reset}s"
        return headers

    def used(self, key_id: str) -> tuple[int, float]:
        """Used totals as of this instance's last reservation for the key."""
        seen = self._seen.get(key_id)
        return (0, 0.0) if seen is None else (seen.used_tokens, seen.used_cost)
