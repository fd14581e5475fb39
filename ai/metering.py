"""Metering: normalized usage per key and model, summed in memory for the process.

Every figure comes from the upstream's own usage report; estimates (``ai.tokens``)
fill in only when an upstream reported nothing, and are counted separately.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ai.usage import Usage


@dataclass(slots=True)
class Meter:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    estimated_requests: int = 0
    cost_usd: float = 0.0


class Metering:
    """Counters keyed by (key id, model requested)."""

    def __init__(self) -> None:
        self._meters: dict[tuple[str, str], Meter] = {}

    def record(self, key_id: str, model: str, usage: Usage, cost: float) -> None:
        meter = self._meters.setdefault((key_id, model), Meter())
        meter.requests += 1
        meter.prompt_tokens += usage.prompt_tokens
        meter.completion_tokens += usage.completion_tokens
        meter.cached_tokens += usage.cached_tokens
        meter.cache_write_tokens += usage.cache_write_tokens
        meter.estimated_requests += int(usage.estimated)
        meter.cost_usd += cost

    def get(self, key_id: str, model: str) -> Meter:
        return self._meters.get((key_id, model), Meter())

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {"key_id": k, "model": m, **asdict(meter)}
            for (k, m), meter in sorted(self._meters.items())
        ]
