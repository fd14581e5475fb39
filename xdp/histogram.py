"""A cumulative latency histogram with fixed buckets that survives a JSON round trip.

The agent and the offloader run in another process than the config API, which reads
their state file; so latencies are kept as Prometheus keeps them (cumulative counts
per upper bound ``le``, a sum and a count; "Histogram" in the Prometheus exposition
format) and exported as they are. Used for the offload delay (conntrack event seen ->
fast-path entry written) and the config-apply latency.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

# seconds: 100 us .. 60 s, enough for both a map write and a whole converge
DEFAULT_BOUNDS: tuple[float, ...] = (
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0,
)  # fmt: skip


@dataclass(slots=True)
class Histogram:
    """Observations in seconds; :meth:`as_dict` is the state-file form."""

    bounds: tuple[float, ...] = DEFAULT_BOUNDS
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; +Inf last
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def as_dict(self) -> dict[str, Any]:
        """``{"buckets": [[le, cumulative count], ...], "sum": s, "count": n}``; the last
        bucket is ``+Inf`` (JSON has no infinity: the string "+Inf")."""
        running, buckets = 0, []
        for le, n in zip((*self.bounds, "+Inf"), self.counts, strict=True):
            running += n
            buckets.append([le, running])
        return {"buckets": buckets, "sum": round(self.total, 6), "count": running}
