"""A bounded in-memory time series of the AI gateway's usage, for the dashboard.

The AI gateway's state file keeps totals (requests, tokens and cost per key and model,
:mod:`ai.state`) and its ``/metrics`` keeps counters since it started (overflow
decisions by policy); neither says when. The config API samples both every
``interval`` seconds into a ring (the same size and interval as the status history),
so the AI page can draw requests, tokens and cost per key and model over time, and the
overflow decisions (queued, spilled, rejected). Counters stay counters: the page takes
differences, and a reset (a new state file, a restarted gateway) shows as a gap.
Nothing is written to disk; a restart of the API starts an empty series.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

#: the meters kept per key and model (a subset of :data:`ai.state.METER_FIELDS`)
KEPT = ("requests", "prompt_tokens", "completion_tokens", "cost_usd")


def reduce_meters(meters: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """key -> model -> the kept meters, from :func:`control.api.ai_handlers.read_usage`."""
    return {
        key: {m["model"]: {f: m.get(f, 0) for f in KEPT} for m in models}
        for key, models in meters.items()
    }


@dataclass(slots=True)
class AiHistory:
    """The ring of samples; :meth:`sample` appends one, :meth:`since` reads."""

    capacity: int = 900
    samples: deque[dict[str, Any]] = field(default_factory=deque)

    def sample(
        self,
        meters: dict[str, list[dict[str, Any]]],
        overflow: dict[str, int] | None,
        now: float,
    ) -> None:
        """``overflow``: decisions by ``policy/decision``; None when the gateway's
        ``/metrics`` could not be read (the chart shows a gap, not a zero)."""
        self.samples.append(
            {"t": round(now, 3), "keys": reduce_meters(meters), "overflow": overflow}
        )
        while len(self.samples) > self.capacity:
            self.samples.popleft()

    def since(self, t: float) -> list[dict[str, Any]]:
        return [s for s in self.samples if s["t"] > t]


AI_HISTORY = web.AppKey("ai_history", AiHistory)
