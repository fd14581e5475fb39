"""Metering: normalized usage per key and model, summed in memory and, with a
:class:`~ai.state.StateStore`, written behind to its SQLite file (so the counters
survive a restart).

Every figure comes from the upstream's own usage report; estimates (``ai.tokens``)
fill in only when an upstream reported nothing, and are counted separately.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ai.state import MeterDelta, StateStore
from ai.usage import Usage


@dataclass(slots=True)
class Meter:
    """One (key, model) meter; fields in ``ai.state.METER_FIELDS`` order."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    estimated_requests: int = 0
    cost_usd: float = 0.0


def _meter(restored: MeterDelta) -> Meter:
    requests, prompt, completion, cached, written, estimated, cost = restored.values
    return Meter(
        int(requests),
        int(prompt),
        int(completion),
        int(cached),
        int(written),
        int(estimated),
        float(cost),
    )


class Metering:
    """Counters keyed by (key id, model requested)."""

    def __init__(
        self,
        store: StateStore | None = None,
        restored: dict[tuple[str, str], MeterDelta] | None = None,
    ) -> None:
        self._meters = {key: _meter(d) for key, d in (restored or {}).items()}
        self._store = store

    def record(self, key_id: str, model: str, usage: Usage, cost: float) -> None:
        delta = Meter(
            1,
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.cached_tokens,
            usage.cache_write_tokens,
            int(usage.estimated),
            cost,
        )
        meter = self._meters.setdefault((key_id, model), Meter())
        meter.requests += delta.requests
        meter.prompt_tokens += delta.prompt_tokens
        meter.completion_tokens += delta.completion_tokens
        meter.cached_tokens += delta.cached_tokens
        meter.cache_write_tokens += delta.cache_write_tokens
        meter.estimated_requests += delta.estimated_requests
        meter.cost_usd += delta.cost_usd
        if self._store is not None:
            self._store.meter(
                key_id,
                model,
                (
                    delta.requests,
                    delta.prompt_tokens,
                    delta.completion_tokens,
                    delta.cached_tokens,
                    delta.cache_write_tokens,
                    delta.estimated_requests,
                    delta.cost_usd,
                ),
            )

    def get(self, key_id: str, model: str) -> Meter:
        return self._meters.get((key_id, model), Meter())

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {"key_id": k, "model": m, **asdict(meter)}
            for (k, m), meter in sorted(self._meters.items())
        ]
