"""Statistics and validation of benchmark runs: min / median / max over valid runs,
ratios against a baseline, and the method's self-check (the ordering of the paths'
CPU cost per packet).  Pure functions over plain records; no privileges, no I/O.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

# The cost order the method must reproduce in every run (cheapest first).  If a run
# breaks it, something other than the gateway's work was measured.
EXPECTED_ORDER: tuple[str, ...] = (
    "xdp_drop",
    "xdp_fastpath",
    "kernel_forward",
    "kernel_masquerade",
)

# A run whose generator sent less than this fraction of the offered rate is invalid.
MIN_OFFERED_FRACTION = 0.97
# A run that lost more than this fraction between generator and sink measured a
# saturated gateway (or sink), not the cost per packet at the offered load.
MAX_LOSS_FRACTION = 0.02


@dataclass(frozen=True, slots=True)
class SchedStat:
    """``/proc/<tid>/schedstat``: on-CPU ns, run-queue wait ns, timeslices run."""

    run_ns: int
    wait_ns: int
    timeslices: int

    def __sub__(self, other: SchedStat) -> SchedStat:
        return SchedStat(
            self.run_ns - other.run_ns,
            self.wait_ns - other.wait_ns,
            self.timeslices - other.timeslices,
        )


def parse_schedstat(text: str) -> SchedStat:
    """Parse the three fields of ``/proc/<pid>/task/<tid>/schedstat``."""
    parts = text.split()
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"schedstat {text!r}: expected three non-negative integers")
    return SchedStat(int(parts[0]), int(parts[1]), int(parts[2]))


@dataclass(frozen=True, slots=True)
class Run:
    """One measurement of one path; ``valid`` False carries the ``reason``."""

    path: str
    index: int
    offered_pps: int
    sent: int
    achieved_pps: float
    forwarded: int
    cpu_ns: int
    wakeups: int
    valid: bool = True
    reason: str = ""
    extra: Mapping[str, float] = field(default_factory=dict)

    @property
    def ns_per_packet(self) -> float | None:
        return self.cpu_ns / self.forwarded if self.forwarded > 0 else None

    @property
    def pkts_per_wakeup(self) -> float | None:
        return self.forwarded / self.wakeups if self.wakeups > 0 else None

    def as_json(self) -> dict[str, Any]:
        """The run with its derived figures, for a result's ``runs``."""
        d = asdict(self)
        d["extra"] = dict(self.extra)
        d["ns_per_packet"] = self.ns_per_packet
        d["pkts_per_wakeup"] = self.pkts_per_wakeup
        return d

    def invalid(self, reason: str) -> Run:
        joined = f"{self.reason}; {reason}" if self.reason else reason
        return replace(self, valid=False, reason=joined)


def check_run(run: Run) -> Run:
    """Mark a run invalid when the generator missed the offered rate or packets were
    lost on the way (the method then measured saturation, not cost)."""
    if run.achieved_pps < MIN_OFFERED_FRACTION * run.offered_pps:
        run = run.invalid(
            f"generator reached {run.achieved_pps:.0f} pps of {run.offered_pps} offered"
        )
    if run.sent <= 0 or run.forwarded <= 0:
        return run.invalid("no packets counted")
    loss = 1.0 - run.forwarded / run.sent
    if loss > MAX_LOSS_FRACTION:
        run = run.invalid(f"{loss:.1%} of sent packets not counted at the sink")
    return run


def check_ordering(
    runs: Mapping[str, Run], order: Sequence[str] = EXPECTED_ORDER
) -> dict[str, Run]:
    """Validate one round (one run per path): cost must strictly increase along
    ``order``.  Paths absent from ``runs`` are skipped; on a violation every run of
    the round in ``order`` is marked invalid."""
    present = [p for p in order if p in runs and runs[p].ns_per_packet is not None]
    costs = [runs[p].ns_per_packet for p in present]
    broken = [
        f"{a} ({ca:.0f} ns) >= {b} ({cb:.0f} ns)"
        for a, b, ca, cb in zip(present, present[1:], costs, costs[1:], strict=False)
        if ca is not None and cb is not None and ca >= cb
    ]
    if not broken:
        return dict(runs)
    reason = "ordering violated: " + ", ".join(broken)
    return {p: (r.invalid(reason) if p in order else r) for p, r in runs.items()}


@dataclass(frozen=True, slots=True)
class Summary:
    """min / median / max of the valid values, and how many runs were valid."""

    minimum: float | None
    median: float | None
    maximum: float | None
    valid_runs: int
    total_runs: int


def summarize(values: Sequence[float | None], valid: Sequence[bool] | None = None) -> Summary:
    flags = list(valid) if valid is not None else [True] * len(values)
    kept = [v for v, ok in zip(values, flags, strict=True) if ok and v is not None]
    if not kept:
        return Summary(None, None, None, 0, len(values))
    return Summary(min(kept), statistics.median(kept), max(kept), len(kept), len(values))


def ratio(value: float | None, baseline: float | None) -> float | None:
    """``value / baseline``, or None when either is missing or the baseline is 0."""
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline
