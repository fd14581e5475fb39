"""The semantic cache's entries shared by every gateway instance through Redis.

Each process keeps its own in-memory index (:class:`ai.semcache.SemanticCacheImpl`:
brute-force cosine in numpy, no search in Redis), kept in sync from the shared store:

- An entry (partition, text, exact-cache key, the 384 float32 of its embedding) is
  written under its tenant's hash tag as ``sem:<sha256(partition, text)>`` with ``PX``
  = ``ttl_seconds``, and a sorted set per tenant (``sem-index``) orders the tenant's
  entries by age; the Lua script that writes trims it to ``max_total_entries`` per
  tenant and returns what it evicted. So the store is tenant-partitioned, bounded and
  expires entries by itself.
- Every write and eviction is then appended to one stream (``<prefix>:{semcache}:events``,
  ``XADD MAXLEN ~`` ``max_total_entries``: https://redis.io/docs/latest/commands/xadd/),
  carrying the entry with its vector, so no instance embeds another's text again.
- At start an instance replays the stream from its beginning (the age of an entry is
  the server time minus its stream ID's milliseconds: expired ones are skipped), then
  follows it (``XREAD BLOCK`` for half of ``op_timeout_s``, so every call stays inside
  the link's deadline). After the store was unreachable it resumes from the last ID it
  applied; if the stream was trimmed past that ID meanwhile, it clears its index and
  replays again (catch-up).

Tenant isolation holds by construction: the partition hashes the tenant
(:func:`ai.semcache_api.partition_key`), a lookup searches one partition, and a hit is
read from the exact cache under the requesting tenant's own key.

Unreachable store, as for the exact cache (``on_unavailable.cache``): the index this
process holds still answers lookups, and the exact cache then bypasses (a miss) or
rejects; a new entry is neither indexed nor shared (its exact-cache entry was dropped
as well). A write never fails a request.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from ai.redis_cache import PUT
from ai.redis_link import RedisLink, StoreUnavailable
from ai.semcache.cache import SemanticCacheImpl
from ai.semcache_api import SemanticHit

log = logging.getLogger("spectra.ai")

BATCH = 500
NO_TTL_MS = 10 * 365 * 86_400_000  # ttl_seconds None: entries leave by the bound only
RETRY_S = 0.2


def _encode(vector: npt.NDArray[np.float32]) -> str:
    return base64.b64encode(vector.astype("<f4").tobytes()).decode()


def _decode(text: str) -> npt.NDArray[np.float32]:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)


def _id_ms(stream_id: str) -> int:
    return int(stream_id.split("-", 1)[0])


def _newer(a: str, b: str) -> bool:
    """Stream ID ``a`` comes after ``b``."""
    ta, _, sa = a.partition("-")
    tb, _, sb = b.partition("-")
    return (int(ta), int(sa or 0)) > (int(tb), int(sb or 0))


class RedisSemanticCache:
    """The :class:`~ai.semcache_api.SemanticCache` shared through a :class:`RedisLink`."""

    def __init__(self, link: RedisLink, local: SemanticCacheImpl) -> None:
        self._link = link
        self.local = local
        config = local.config
        self._ttl_ms = NO_TTL_MS if config.ttl_seconds is None else int(config.ttl_seconds * 1000)
        self._bound = config.max_total_entries
        self._stream = f"{link.config.key_prefix}:{{semcache}}:events"
        self.last_id = "0"  # the last stream entry applied
        self.applied = 0  # stream entries applied, since start
        self.reloads = 0  # full replays (start, and after the stream outran this process)
        self._follow: asyncio.Task[None] | None = None
        self._gap = True  # a replay may be needed before following
        self._stopping = False

    async def open(self) -> None:
        """Replay what the store holds, then follow it in the background."""
        with contextlib.suppress(StoreUnavailable):
            await self._catch_up()
        self._follow = asyncio.create_task(self._follow_loop(), name="spectra-ai-semcache")

    async def close(self) -> None:
        """Stop following: the loop ends after its current read (at most half of
        ``op_timeout_s``; cancelling redis-py inside a blocking read can leave its
        pool waiting on the connection)."""
        task, self._follow = self._follow, None
        if task is None:
            return
        self._stopping = True
        try:
            await asyncio.wait_for(asyncio.shield(task), 2 * self._link.config.op_timeout_s + 1)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            self._stopping = False

    async def lookup(self, partition: str, text: str) -> SemanticHit | None:
        return await self.local.lookup(partition, text)

    async def add(self, partition: str, text: str, entry_id: str, tenant: str = "") -> None:
        if not self._link.available:
            return  # the exact-cache entry was not stored either
        vector = await self.local.embed_for_add(text)
        if vector is None:
            return
        member = hashlib.sha256(f"{partition}\0{text}".encode()).hexdigest()[:32]
        stored = {"partition": partition, "text": text, "entry_id": entry_id}
        stored["vector"] = _encode(vector)
        keys = [self._link.key(tenant, "sem", member), self._link.key(tenant, "sem-index", "all")]
        args = [json.dumps(stored), str(self._ttl_ms), str(self._bound), member]
        args += [self._link.key(tenant, "sem", ""), "1", ""]
        client = self._link.client
        try:
            evicted = await self._link.script(PUT, keys, args, "sem put")
            pipe = client.pipeline(transaction=False)
            for raw in evicted:
                gone = json.loads(raw)
                pipe.xadd(
                    self._stream,
                    {"op": "del", "partition": gone["partition"], "text": gone["text"]},
                    maxlen=self._bound,
                    approximate=True,
                )
            pipe.xadd(self._stream, {"op": "add", **stored}, maxlen=self._bound, approximate=True)
            await self._link.call(pipe.execute, "sem announce")
        except StoreUnavailable as exc:
            log.debug("semantic entry not shared: %s", exc)
            return
        # indexed here at once (the stream brings it back later: a refresh)
        await self.local.run(lambda: self.local.insert_sync(partition, text, entry_id, vector, 0))

    async def _follow_loop(self) -> None:
        block_ms = max(1, int(self._link.config.op_timeout_s * 500))
        while not self._stopping:
            try:
                if self._gap:
                    await self._catch_up()
                await self._read(block_ms)
            except StoreUnavailable:
                self._gap = True  # the stream may move past us while we cannot read
                await asyncio.sleep(RETRY_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bad entry must not stop the follower
                log.error("semantic cache follower: %s", exc)
                await asyncio.sleep(RETRY_S)

    async def _catch_up(self) -> None:
        """Resume from ``last_id``; clear and replay from the start if the stream was
        trimmed past it (or at start)."""
        client = self._link.client
        first = await self._link.call(lambda: client.xrange(self._stream, count=1), "sem first")
        if self.last_id == "0" or (first and _newer(first[0][0], self.last_id)):
            if self.last_id != "0":
                log.warning(
                    "semantic cache: the shared stream moved past %s; reloading", self.last_id
                )
            await self.local.run(self.local.clear_sync)
            self.last_id, self.reloads = "0", self.reloads + 1
        while True:
            start = "(" + self.last_id if self.last_id != "0" else "-"
            batch = await self._link.call(
                functools.partial(client.xrange, self._stream, min=start, count=BATCH),
                "sem replay",
            )
            if not batch:
                break
            await self._apply(batch)
        self._gap = False

    async def _read(self, block_ms: int) -> None:
        client = self._link.client
        answer = await self._link.call(
            lambda: client.xread({self._stream: self.last_id}, count=BATCH, block=block_ms),
            "sem follow",
        )
        for _stream, entries in answer or []:
            await self._apply(entries)

    async def _apply(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        client = self._link.client
        seconds, micros = await self._link.call(lambda: client.time(), "sem time")
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        local = self.local

        def apply() -> None:
            for stream_id, fields in entries:
                try:
                    if fields.get("op") == "add":
                        vector = _decode(fields["vector"])
                        if vector.shape != (local.embedder.dim,):
                            continue  # written by another embedder
                        age = max(0.0, (now_ms - _id_ms(stream_id)) / 1000)
                        partition, text = fields["partition"], fields["text"]
                        local.insert_sync(partition, text, fields["entry_id"], vector, age)
                    elif fields.get("op") == "del":
                        local.discard_sync(fields["partition"], fields["text"])
                except (KeyError, ValueError) as exc:
                    log.warning("semantic cache: stream entry %s skipped: %s", stream_id, exc)

        await local.run(apply)
        self.last_id = entries[-1][0]
        self.applied += len(entries)

    def status(self) -> dict[str, Any]:
        return {
            "entries": self.local.total_entries,
            "last_event": self.last_id,
            "events_applied": self.applied,
            "reloads": self.reloads,
        }
