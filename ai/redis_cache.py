"""The exact response cache shared by every gateway instance through Redis.

Same key (:func:`ai.canonical.exact_key`: tenant + canonical resolved request), same
values and TTL as :class:`ai.cache.ExactCache`. An entry is a string key
``cache:<key>`` under its tenant's hash tag holding ``{"tenant", "value"}`` (the tenant
is compared on read as well), written with ``PX`` = the TTL; a sorted set per tenant
(``cache-index``) orders the entries by age and a Lua script trims it to
``max_entries`` as it writes, so the bound holds per tenant partition (in one cluster
slot; a bound across tenants would need a cross-slot operation). Set Redis's
``maxmemory-policy`` to ``volatile-ttl`` or ``allkeys-lru`` for a memory bound as well.

Singleflight across instances: the first instance to miss takes ``flight:<key>`` with
``SET NX PX`` (https://redis.io/docs/latest/commands/set/) for at most
``flight_wait_s`` and reads the cache once more in the same script (the last leader
may have just finished); its write releases the lock in the same script too. A
request's first read (:meth:`RedisExactCache.lookup`, sent by the pipeline along with
the budget reservation) takes the lock already when the entry is missing and the lock
is free, so a miss waits for the store once before the upstream call (two requests
in flight at once; the write goes behind the answer). The others poll for the entry (10 ms
doubling to 100 ms) until it appears (a coalesced answer) or the lock goes away (they
then call upstream themselves). The lock is released by compare-and-delete, so an
expired lock taken over by another instance is never removed by the first.

The write is sent behind the answer (:class:`~ai.offpath.OffPath`; a local follower
already has the value from memory): the lock moves to that write as it starts, so it
is held until the entry is stored and other instances' followers keep waiting for it
meanwhile; this instance's own reads of the key wait for its write in flight.
:meth:`close` awaits the writes in flight.

Unreachable store: stance ``bypass`` makes every read a miss and drops writes (the
request goes upstream); ``reject`` answers 503 on the read. A write never fails a
request whose answer the gateway already has.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import secrets
from typing import Any

from ai.config import ExactCacheConfig
from ai.offpath import OffPath
from ai.redis_link import RedisLink, StoreUnavailable
from ai.resp import Script

log = logging.getLogger("spectra.ai")

# KEYS: entry, index[, lock]. ARGV: stored JSON, TTL ms, max entries, index member,
# entry prefix, "1" to return the stored JSON of the entries evicted to keep the bound
# (else nothing), the lock holder's token ("" = none held). The write, the bound, and
# the release of the singleflight lock in one round trip; the semantic cache's entries
# use it too (:mod:`ai.redis_semcache`, without a lock).
PUT = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
local evicted = {}
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  for _, member in ipairs(redis.call('ZRANGE', KEYS[2], 0, over - 1)) do
    if ARGV[6] == '1' then
      local stored = redis.call('GET', ARGV[5] .. member)
      if stored then table.insert(evicted, stored) end
    end
    redis.call('DEL', ARGV[5] .. member)
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
end
redis.call('PEXPIRE', KEYS[2], ttl)
if KEYS[3] and ARGV[7] ~= '' and redis.call('GET', KEYS[3]) == ARGV[7] then
  redis.call('DEL', KEYS[3])
end
return evicted
""")

# KEYS: lock, entry. ARGV: the token, lock TTL ms. Takes the lock if free and reads the
# entry in the same round trip (the last leader may have stored it since our miss).
LOCK_READ = Script("""
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then
  return {1, redis.call('GET', KEYS[2])}
end
return {0, false}
""")

# KEYS: lock, entry. ARGV: the token, lock TTL ms. Reads the entry; missing, takes the
# lock if free: {1} taken, {0, entry or nil} not.
LOOKUP_LOCK = Script("""
local v = redis.call('GET', KEYS[2])
if v then return {0, v} end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', tonumber(ARGV[2])) then return {1} end
return {0}
""")

# KEYS: lock. ARGV: the holder's token.
RELEASE = Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""")
POLL_MIN_S, POLL_MAX_S = 0.01, 0.1
Looked = tuple[dict[str, Any] | None, bool]  # (the entry or None, the lock taken)


def _stored(sent: asyncio.Future[Any]) -> None:
    """A write sent behind an answer landed; a failed one is only logged: the answer
    is the client's already, and the lock it carried expires after ``flight_wait_s``
    (the store is down then: no unlock could reach it either)."""
    exc = None if sent.cancelled() else sent.exception()
    if isinstance(exc, StoreUnavailable):
        log.debug("exact cache entry not stored: %s", exc)
    elif exc is not None:
        log.error("exact cache entry not stored: %s", exc)


class RedisExactCache:
    """The :class:`~ai.backend.ResponseCache` over a :class:`RedisLink`."""

    remote = True

    def __init__(self, link: RedisLink, config: ExactCacheConfig) -> None:
        self._link = link
        self._config = config
        self._held: dict[tuple[str, str], str] = {}  # (key, tenant) -> lock token
        self._behind = OffPath("exact cache entry")
        self._nonce, self._serial = secrets.token_hex(8), itertools.count()

    async def open(self) -> None:
        """Nothing to load: the entries live in the store."""

    async def close(self) -> None:
        await self.drain()

    async def drain(self) -> None:
        """Until every write sent behind an answer is done."""
        await self._behind.drain()

    def _entry(self, key: str, tenant: str) -> str:
        return self._link.key(tenant, "cache", key)

    def _bypass(self) -> bool:
        return self._link.config.on_unavailable.cache == "bypass"

    async def get(self, key: str, tenant: str) -> dict[str, Any] | None:
        entry = self._entry(key, tenant)
        if self._behind.pending((key, tenant)):  # read this instance's own write
            await self._link.after((key, tenant), self._behind)
        try:
            raw = await self._link.command("cache get", "GET", entry)
        except StoreUnavailable:
            if self._bypass():
                return None
            raise
        return self._value(raw, tenant)

    def _lock_args(self, key: str, tenant: str) -> tuple[list[str], list[str], str]:
        token = f"{self._nonce}.{next(self._serial)}"  # unique, without a urandom call
        ttl_ms = int(self._link.config.flight_wait_s * 1000)
        return (
            [self._link.key(tenant, "flight", key), self._entry(key, tenant)],
            [token, str(ttl_ms)],
            token,
        )

    async def lookup(self, key: str, tenant: str) -> Looked:
        """:meth:`get`; on a miss, the singleflight lock too if it is free (True)."""
        if self._behind.pending((key, tenant)):  # read this instance's own write
            await self._link.after((key, tenant), self._behind)
        keys, args, token = self._lock_args(key, tenant)
        try:
            reply = await self._link.script(LOOKUP_LOCK, keys, args, "cache lookup")
        except StoreUnavailable:
            if self._bypass():
                return None, False
            raise
        return self._looked(reply, key, tenant, token)

    def start_lookup(self, key: str, tenant: str) -> asyncio.Future[Looked]:
        """:meth:`lookup` under way: sent at once (no task) when the connection is open
        and this instance has no write of ``key`` still to send, so it leaves with the
        budget reservation in one write."""
        if not self._behind.unissued((key, tenant)):
            keys, args, token = self._lock_args(key, tenant)
            sent = self._link.send(LOOKUP_LOCK, keys, args, "cache lookup")
            if sent is not None:
                result: asyncio.Future[Looked] = asyncio.get_running_loop().create_future()
                done = functools.partial(self._landed, result, key, tenant, token)
                sent.add_done_callback(done)
                return result
        return asyncio.ensure_future(self.lookup(key, tenant))

    def _landed(
        self,
        result: asyncio.Future[Looked],
        key: str,
        tenant: str,
        token: str,
        sent: asyncio.Future[Any],
    ) -> None:
        exc = sent.exception()
        if result.done():  # its request went away (a lock it took expires)
            return
        if exc is None:
            try:
                result.set_result(self._looked(sent.result(), key, tenant, token))
            except Exception as bad:  # an entry that does not parse
                result.set_exception(bad)
        elif isinstance(exc, StoreUnavailable) and self._bypass():
            result.set_result((None, False))
        else:
            result.set_exception(exc)

    def _looked(self, reply: list[Any], key: str, tenant: str, token: str) -> Looked:
        if int(reply[0]) == 1:
            self._held[(key, tenant)] = token
            return None, True
        return self._value(reply[1] if len(reply) > 1 else None, tenant), False

    @staticmethod
    def _value(raw: str | None, tenant: str) -> dict[str, Any] | None:
        if raw is None:
            return None
        stored = json.loads(raw)
        if stored.get("tenant") != tenant:
            return None
        value: dict[str, Any] = stored["value"]
        return value

    async def put(self, key: str, tenant: str, value: dict[str, Any]) -> None:
        """Store, behind the caller; a singleflight lock this caller holds for ``key``
        passes to the write and is released in the same round trip (``release`` then
        has nothing left to do)."""
        lock = self._link.key(tenant, "flight", key)
        token = self._held.pop((key, tenant), "")
        keys = [self._entry(key, tenant), self._link.key(tenant, "cache-index", "all"), lock]
        args = [
            json.dumps({"tenant": tenant, "value": value}),
            str(max(1, int(self._config.ttl_s * 1000))),
            str(self._config.max_entries),
            key,
            self._entry("", tenant),
            "",
            token,
        ]
        sent = self._link.send(PUT, keys, args, "cache put")
        if sent is None:  # not at once: a task connects, or applies the stance
            await self._behind.submit((key, tenant), self._write(keys, args))
        else:
            await self._behind.track((key, tenant), sent, _stored)

    async def _write(self, keys: list[str], args: list[str]) -> None:
        try:
            await self._link.script(PUT, keys, args, "cache put")
        except StoreUnavailable as exc:
            log.debug("exact cache entry not stored: %s", exc)

    async def _unlock(self, lock: str, token: str) -> None:
        with contextlib.suppress(StoreUnavailable):
            await self._link.script(RELEASE, [lock], [token], "unlock")

    async def coalesce(self, key: str, tenant: str) -> dict[str, Any] | None:
        """Another instance's answer if it is calling upstream for ``key`` (waiting
        for it); else None, and this caller leads (``release`` when done)."""
        keys, args, token = self._lock_args(key, tenant)
        lock = keys[0]
        try:
            taken, raw = await self._link.script(LOCK_READ, keys, args, "flight lock")
        except StoreUnavailable:
            if self._bypass():
                return None
            raise
        if taken:
            self._held[(key, tenant)] = token
            # the previous leader may have stored it and let go since our miss
            stored = self._value(raw, tenant)
            if stored is not None:
                await self.release(key, tenant)
            return stored
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + self._link.config.flight_wait_s, POLL_MIN_S
        while loop.time() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX_S)
            value = await self.get(key, tenant)
            if value is not None:
                return value
            try:
                held = await self._link.command("flight", "EXISTS", lock)
            except StoreUnavailable:
                return None
            if not held:
                return await self.get(key, tenant)
        return None

    async def release(self, key: str, tenant: str) -> None:
        token = self._held.pop((key, tenant), None)
        if token is None:
            return
        await self._unlock(self._link.key(tenant, "flight", key), token)  # else it expires
