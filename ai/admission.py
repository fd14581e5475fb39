"""The gateway's own admission limit for a local model: concurrency plus a bounded queue.

Being full is a failure before the first token, like a 429 from the engine: the
route's overflow policy decides what happens.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ai.config import OverflowConfig


class Admission:
    """At most ``max_concurrency`` in flight, at most ``max_queue`` waiting (FIFO)."""

    def __init__(self, config: OverflowConfig) -> None:
        self._config = config
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def config(self) -> OverflowConfig:
        return self._config

    def try_acquire(self) -> bool:
        if self._active < self._config.max_concurrency and not self._waiters:
            self._active += 1
            return True
        return False

    async def acquire(self, timeout: float) -> bool:
        """Wait for a slot (bounded queue, bounded time); False if neither allows."""
        if self.try_acquire():
            return True
        if len(self._waiters) >= self._config.max_queue:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def release(self) -> None:
        """Hand the slot to the oldest live waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._active -= 1

    @property
    def active(self) -> int:
        return self._active
