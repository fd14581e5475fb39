"""A bounded in-memory time series of the status the API already serves.

The dashboard's charts need a look back, and the status provider only knows "now". The
config API samples the provider every ``interval`` seconds into a ring of at most
``capacity`` samples (the default keeps 30 minutes at 2 s), each reduced to the few
numbers the charts draw per instance: XDP packets and bytes (all, fast path, dropped by
reason), the inside and outside interfaces' rx/tx counters (which give the direction),
conntrack occupancy, NAT port occupancy and allocation errors, the applied
version. Counters are kept as counters; rates are differences between samples (the
client computes them, so a counter reset shows as a gap, not a negative rate).
Nothing is stored on disk: a restart of the API starts an empty history.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

log = logging.getLogger("spectra.control")

FAST_PATH = frozenset({"REDIRECT", "REDIRECT_GWLB"})
LINK_KEYS = frozenset({"rx_packets", "rx_bytes", "tx_packets", "tx_bytes"})


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def reduce_instance(state: dict[str, Any]) -> dict[str, Any]:
    """The numbers of one instance's status that the charts draw."""
    reasons = _dict(_dict(state.get("xdp_counters")).get("reasons"))
    packets = octets = fast_packets = fast_bytes = 0
    drops: dict[str, int] = {}
    for reason, counter in reasons.items():
        p = _int(_dict(counter).get("packets")) or 0
        b = _int(_dict(counter).get("bytes")) or 0
        packets += p
        octets += b
        if reason in FAST_PATH:
            fast_packets += p
            fast_bytes += b
        if reason.startswith("DROP_"):
            drops[reason.lower()] = p
    links = {
        role: {k: v for k, v in _dict(c).items() if k in LINK_KEYS and _int(v) is not None}
        for role, c in _dict(state.get("links")).items()
    }
    conntrack = _dict(state.get("conntrack"))
    offload = _dict(state.get("offload"))
    return {
        "packets": packets,
        "bytes": octets,
        "fast_packets": fast_packets,
        "fast_bytes": fast_bytes,
        "drops": drops,
        "links": links,
        "conntrack_count": _int(conntrack.get("count")),
        "conntrack_max": _int(conntrack.get("max")),
        "conntrack_insert_failed": _int(conntrack.get("insert_failed")),
        "nat_ports_busiest": _int(offload.get("nat_ports_busiest")),
        "applied_version": _int(state.get("applied_version")),
        "converged": bool(state.get("converged")),
        "role": _dict(state.get("aws")).get("role"),  # leader / standby (HA), else None
    }


@dataclass(slots=True)
class StatusHistory:
    """The ring of samples; :meth:`sample` appends one, :meth:`since` reads."""

    capacity: int = 900
    samples: deque[dict[str, Any]] = field(default_factory=deque)

    def sample(self, status: dict[str, Any], now: float) -> None:
        instances = _dict(status.get("instances"))
        self.samples.append(
            {
                "t": round(now, 3),
                "instances": {n: reduce_instance(_dict(s)) for n, s in instances.items()},
            }
        )
        while len(self.samples) > self.capacity:
            self.samples.popleft()

    def since(self, t: float) -> list[dict[str, Any]]:
        return [s for s in self.samples if s["t"] > t]


HISTORY = web.AppKey("history", StatusHistory)


def periodic_ctx(
    tick: Callable[[web.Application], Awaitable[None]], interval: float, what: str
) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: ``await tick(app)`` every ``interval`` seconds until the app shuts
    down; a failing tick is logged (``what`` names it) and the next one tries again."""

    async def run(app: web.Application) -> None:
        while True:
            try:
                await tick(app)
            except Exception as exc:  # samples of a host are best effort
                log.warning("%s: cannot sample: %s", what, exc)
            await asyncio.sleep(interval)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(run(app))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx


def history_ctx(
    provider: Callable[[], dict[str, Any]],
    interval: float,
    call: Callable[[web.Application, Callable[[], dict[str, Any]]], Any],
) -> Callable[[web.Application], AsyncIterator[None]]:
    """cleanup_ctx: sample ``provider`` (run through ``call``, the store thread pool)
    every ``interval`` seconds into the app's :data:`HISTORY`."""

    async def tick(app: web.Application) -> None:
        status = await call(app, provider)
        app[HISTORY].sample(status, time.time())

    return periodic_ctx(tick, interval, "status history")
