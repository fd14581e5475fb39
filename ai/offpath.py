"""Store writes sent after the answer instead of before it: bounded, keyed, drained.

The Redis backend's budget settlement and exact-cache write need no reply for the
answer the client gets, so they are sent behind it and the response leaves one round
trip earlier each (issue #23 point 7: the added latency of the shared store). On the
lean client's open connection a write is queued at once and only its reply is
awaited, as a future (:meth:`OffPath.track`: no task, ~2 us where a task costs ~20);
otherwise (connecting, cluster mode) it runs as a task (:meth:`OffPath.submit`).
Neither weakens a guarantee: until a settlement lands its reservation stays charged
(the worst case, never less), and a singleflight lock stays held until the entry it
guards is written. Three rules keep it bounded and ordered:

* at most ``limit`` writes in flight; past that the caller awaits its write inline
  (backpressure instead of an unbounded task set);
* writes are keyed: :meth:`OffPath.wait` lets a reader of the same key wait for them
  (an instance reads its own writes, so a sequential client sees the same decisions
  as with the writes inline); over a connection that executes commands in the order
  they were written (the lean client of :mod:`ai.resp`: one connection, FIFO), a
  reader only needs the writes to have been *issued* before its own command,
  :meth:`OffPath.issued`, which costs no round trip;
* :meth:`OffPath.drain` awaits every write in flight (at shutdown, before the link
  closes).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

log = logging.getLogger("spectra.ai")


class OffPath:
    """Keyed background writes, at most ``limit`` in flight."""

    def __init__(self, name: str, limit: int = 1024) -> None:
        self._name = name
        self._limit = limit
        self._tasks: dict[Hashable, set[asyncio.Future[Any]]] = {}
        self._unissued: dict[Hashable, set[asyncio.Future[Any]]] = {}  # not yet stepped
        self._count = 0

    @property
    def in_flight(self) -> int:
        return self._count

    async def submit(self, key: Hashable, write: Awaitable[None]) -> None:
        """Run ``write`` behind the caller (inline when ``limit`` are in flight)."""
        if self._count >= self._limit:
            await write
            return
        task: asyncio.Task[None] = asyncio.ensure_future(self._run(key, write))
        self._unissued.setdefault(key, set()).add(task)
        self._tasks.setdefault(key, set()).add(task)
        self._count += 1
        task.add_done_callback(lambda done: self._done(key, done))

    async def track(
        self,
        key: Hashable,
        sent: asyncio.Future[Any],
        landed: Callable[[asyncio.Future[Any]], None],
    ) -> None:
        """A write already sent (``sent``: its reply to come; no task needed), kept like
        :meth:`submit`'s until ``landed(sent)`` has seen its reply or failure; awaited
        here when ``limit`` are in flight."""
        self._tasks.setdefault(key, set()).add(sent)
        self._count += 1
        sent.add_done_callback(lambda done: self._done(key, done, landed))
        if self._count > self._limit:
            await asyncio.wait([sent])

    async def _run(self, key: Hashable, write: Awaitable[None]) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._issue(key, task)  # the write's first step (its command sent) follows at once
        await write

    def _issue(self, key: Hashable, task: asyncio.Future[Any]) -> None:
        waiting = self._unissued.get(key)
        if waiting is not None:
            waiting.discard(task)
            if not waiting:
                del self._unissued[key]

    def _done(
        self,
        key: Hashable,
        task: asyncio.Future[Any],
        landed: Callable[[asyncio.Future[Any]], None] | None = None,
    ) -> None:
        self._issue(key, task)  # cancelled before its first step
        self._count -= 1
        tasks = self._tasks.get(key)
        if tasks is not None:
            tasks.discard(task)
            if not tasks:
                del self._tasks[key]
        if landed is not None:
            landed(task)
        elif not task.cancelled() and task.exception() is not None:
            log.error("%s written behind failed: %s", self._name, task.exception())

    def pending(self, key: Hashable) -> bool:
        return key in self._tasks

    def unissued(self, key: Hashable) -> bool:
        """Whether a write of ``key`` has not taken its first step yet."""
        return key in self._unissued

    async def wait(self, key: Hashable) -> None:
        """Until the writes of ``key`` in flight now are done."""
        tasks = self._tasks.get(key)
        if tasks:
            await asyncio.wait(list(tasks))

    async def issued(self, key: Hashable) -> None:
        """Until the writes of ``key`` submitted so far have taken their first step
        (each task's first step is queued before this caller's next one: FIFO)."""
        while key in self._unissued:
            await asyncio.sleep(0)

    async def drain(self) -> None:
        """Until every write in flight is done (also those submitted meanwhile)."""
        while self._tasks:
            await asyncio.wait([t for tasks in self._tasks.values() for t in tasks])
