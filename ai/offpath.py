"""Store writes sent after the answer instead of before it: bounded, keyed, drained.

The Redis backend's budget settlement and exact-cache write need no reply for the
answer the client gets, so they run as tasks of their own and the response leaves one
round trip earlier each (issue #23 point 7: the added latency of the shared store).
Neither weakens a guarantee: until a settlement lands its reservation stays charged
(the worst case, never less), and a singleflight lock stays held until the entry it
guards is written. Three rules keep it bounded and ordered:

* at most ``limit`` writes in flight; past that the caller awaits its write inline
  (backpressure instead of an unbounded task set);
* writes are keyed: :meth:`OffPath.wait` lets a reader of the same key wait for them
  (an instance reads its own writes, so a sequential client sees the same decisions
  as with the writes inline);
* :meth:`OffPath.drain` awaits every write in flight (at shutdown, before the link
  closes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Hashable

log = logging.getLogger("spectra.ai")


class OffPath:
    """Keyed background writes, at most ``limit`` in flight."""

    def __init__(self, name: str, limit: int = 1024) -> None:
        self._name = name
        self._limit = limit
        self._tasks: dict[Hashable, set[asyncio.Task[None]]] = {}
        self._count = 0

    @property
    def in_flight(self) -> int:
        return self._count

    async def submit(self, key: Hashable, write: Awaitable[None]) -> None:
        """Run ``write`` behind the caller (inline when ``limit`` are in flight)."""
        if self._count >= self._limit:
            await write
            return
        task: asyncio.Task[None] = asyncio.ensure_future(write)
        self._tasks.setdefault(key, set()).add(task)
        self._count += 1
        task.add_done_callback(lambda done: self._done(key, done))

    def _done(self, key: Hashable, task: asyncio.Task[None]) -> None:
        self._count -= 1
        tasks = self._tasks.get(key)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._tasks[key]
        if not task.cancelled() and task.exception() is not None:
            log.error("%s written behind failed: %s", self._name, task.exception())

    def pending(self, key: Hashable) -> bool:
        return key in self._tasks

    async def wait(self, key: Hashable) -> None:
        """Until the writes of ``key`` in flight now are done."""
        tasks = self._tasks.get(key)
        if tasks:
            await asyncio.wait(list(tasks))

    async def drain(self) -> None:
        """Until every write in flight is done (also those submitted meanwhile)."""
        while self._tasks:
            await asyncio.wait([t for tasks in self._tasks.values() for t in tasks])
