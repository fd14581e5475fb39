"""The figures and goals of the ``failover`` suite (:mod:`perf.failover`), apart from the
lab that produces them: one record per scenario run (:func:`sample`), the table rows
against the same run's baselines (:func:`results`), the issue's goals (:func:`goals`).

Baselines: ``kill_leader_no_sync`` (a NAT instance without conntrack sync, what fck-nat
and alterNAT give), the lease's bound (``duration_s + skew_margin_s``: a standby may take
over no earlier than that after the leader's last renewal) and the ``steady`` run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from perf.report import Result
from perf.stats import summarize

GAP_GOAL_S = 3.0
SURVIVAL_GOAL = 0.99
NOISE_GAP_S = 0.5  # an agent restart may cost a datagram or two, never a failover's gap


@dataclass(frozen=True, slots=True)
class KillSpec:
    """One kill scenario: conntrack sync on or off, which fault."""

    sync: bool
    fault: str  # a key of perf.failover.FAULTS


KILLS: dict[str, KillSpec] = {
    "kill_leader": KillSpec(sync=True, fault="instance"),  # the product
    "kill_leader_no_sync": KillSpec(sync=False, fault="instance"),  # the baseline
    "kill_agent_only": KillSpec(sync=True, fault="agent"),
}


@dataclass(frozen=True, slots=True)
class Settings:
    runs: int = 3
    steady_s: float = 600.0
    connections: int = 200
    steady_connections: int = 50
    interval_s: float = 0.05
    udp_rate: float = 100.0
    kill_at_s: float = 8.0
    after_s: float = 15.0
    agent_down_s: float = 3.0  # longer than the lab's lease + skew: the grace is what keeps it
    forward_probes: bool = False  # aws.health.forward_probes on the lab's internet service

    @classmethod
    def from_options(
        cls, quick: bool, runs: int | None, steady_s: float | None, *, forward_probes: bool = False
    ) -> Settings:
        return cls(
            runs=runs if runs is not None else (1 if quick else 3),
            steady_s=steady_s if steady_s is not None else (60.0 if quick else 600.0),
            forward_probes=forward_probes,
        )


@dataclass(slots=True)
class Fault:
    """What the agents reported after a fault (seconds after it, wall clock)."""

    killed: str | None
    new_leader: str | None = None
    lease_taken_s: float | None = None
    takeover_done_s: float | None = None
    takeover_steps_s: float | None = None
    takeover_ok: bool | None = None
    resumed_s: float | None = None
    takeovers: int = 0  # fencing-token increments over both AZs' leases


def sample(
    scenario: str,
    run: int,
    probe: Mapping[str, Any],
    fault: Fault,
    *,
    stray_conntrackd: Sequence[str] = (),
) -> dict[str, Any]:
    """One run's record from the probe's JSON summary and the fault's outcome. A run is
    invalid when a connection never opened, no datagram came back, or a conntrackd ran
    during a no-sync run."""
    reasons = []
    unopened = probe["never_opened"] + sum("connect:" in f for f in probe.get("failures", []))
    if unopened:
        reasons.append(f"{unopened} connections never opened")
    if not probe["udp_received"]:
        reasons.append("no datagram came back")
    if stray_conntrackd:
        reasons.append(f"conntrackd ran on {', '.join(stray_conntrackd)}")
    gap = probe["udp_gap"]
    return {
        "scenario": scenario,
        "run": run,
        "valid": not reasons,
        "reason": "; ".join(reasons),
        "connections": probe["connections"],
        "survived": probe["survived"],
        "survival": probe["survived"] / probe["connections"] if probe["connections"] else 0.0,
        "reset": probe["reset"],
        "stalled": probe["stalled"],
        "mismatched": probe["mismatched"],
        "errored": probe["errored"],
        "udp_gap_s": gap["gap_ms"] / 1000,
        "udp_lost_in_gap": gap["lost"],
        "udp_sent": probe["udp_sent"],
        "udp_received": probe["udp_received"],
        "tcp_max_echo_delay_s": probe["tcp_max_echo_delay_ms"] / 1000,
        "killed": fault.killed,
        "new_leader": fault.new_leader,
        "lease_taken_s": fault.lease_taken_s,
        "takeover_done_s": fault.takeover_done_s,
        "takeover_steps_s": fault.takeover_steps_s,
        "takeover_ok": fault.takeover_ok,
        "resumed_s": fault.resumed_s,
        "takeovers": fault.takeovers,
        "failures": list(probe.get("failures", []))[:5],
    }


def _runs(samples: Sequence[Mapping[str, Any]], scenario: str) -> list[Mapping[str, Any]]:
    return [s for s in samples if s["scenario"] == scenario]


def _median(samples: Sequence[Mapping[str, Any]], scenario: str, key: str) -> float | None:
    runs = _runs(samples, scenario)
    return summarize([r[key] for r in runs], [r["valid"] for r in runs]).median


def _row(
    samples: Sequence[Mapping[str, Any]],
    metric: str,
    scenario: str,
    key: str,
    unit: str,
    baseline: tuple[str, float | None] | None = None,
    *,
    lower_is_better: bool = True,
) -> Result:
    runs = _runs(samples, scenario)
    s = summarize([r[key] for r in runs], [r["valid"] for r in runs])
    return Result(
        metric,
        scenario,
        unit,
        s.median,
        baseline[0] if baseline else None,
        baseline[1] if baseline else None,
        runs=[dict(r) for r in runs],
        valid=s.valid_runs > 0,
        minimum=s.minimum,
        maximum=s.maximum,
        lower_is_better=lower_is_better,
    )


def results(
    samples: Sequence[Mapping[str, Any]], settings: Settings, lease: Mapping[str, Any]
) -> list[Result]:
    """The table: the product's failover against the no-sync baseline and the lease's
    bound, the agent restart and the steady run against steady."""
    bound = ("lease duration+skew", float(lease["duration_s"]) + float(lease["skew_margin_s"]))
    no_sync = "kill_leader_no_sync"

    def base(key: str) -> tuple[str, float | None]:
        return (no_sync, _median(samples, no_sync, key))

    steady_gap = ("steady", _median(samples, "steady", "udp_gap_s"))
    return [
        _row(samples, "udp_gap", "kill_leader", "udp_gap_s", "s", base("udp_gap_s")),
        _row(samples, "udp_gap_vs_lease", "kill_leader", "udp_gap_s", "s", bound),
        _row(samples, "udp_gap_vs_lease", no_sync, "udp_gap_s", "s", bound),
        _row(
            samples,
            "tcp_survival",
            "kill_leader",
            "survival",
            "fraction",
            base("survival"),
            lower_is_better=False,
        ),
        _row(samples, "tcp_survival", no_sync, "survival", "fraction", lower_is_better=False),
        _row(samples, "tcp_resets", "kill_leader", "reset", "connections", base("reset")),
        _row(samples, "tcp_resets", no_sync, "reset", "connections"),
        _row(samples, "lease_taken", "kill_leader", "lease_taken_s", "s", bound),
        _row(samples, "takeover_done", "kill_leader", "takeover_done_s", "s", bound),
        _row(samples, "takeover_done", no_sync, "takeover_done_s", "s", bound),
        _row(samples, "udp_gap", "kill_agent_only", "udp_gap_s", "s", steady_gap),
        _row(
            samples,
            "tcp_survival",
            "kill_agent_only",
            "survival",
            "fraction",
            lower_is_better=False,
        ),
        _row(samples, "takeovers", "kill_agent_only", "takeovers", "count"),
        _row(samples, "resumed", "kill_agent_only", "resumed_s", "s"),
        _row(samples, "udp_gap", "steady", "udp_gap_s", "s"),
        _row(samples, "tcp_survival", "steady", "survival", "fraction", lower_is_better=False),
        _row(samples, "takeovers", "steady", "takeovers", "count"),
    ]


@dataclass(frozen=True, slots=True)
class Goal:
    """One of the issue's goals: met (None: no valid run to tell) and what was measured."""

    goal: str
    met: bool | None
    measured: str


def _values(samples: Sequence[Mapping[str, Any]], scenario: str, key: str) -> list[Any]:
    return [r[key] for r in _runs(samples, scenario) if r["valid"] and r[key] is not None]


def _goal(name: str, values: Sequence[Any], ok: bool, measured: str) -> Goal:
    return Goal(name, ok if values else None, measured if values else "no valid run")


def goals(samples: Sequence[Mapping[str, Any]], settings: Settings) -> list[Goal]:
    """Each goal judged on the worst valid run."""
    gaps = _values(samples, "kill_leader", "udp_gap_s")
    alive = _values(samples, "kill_leader", "survival")
    resets = _values(samples, "kill_leader", "reset")
    agent = _runs(samples, "kill_agent_only")
    agent_ok = [
        r["takeovers"] == 0 and r["survival"] >= 1.0 and r["udp_gap_s"] <= NOISE_GAP_S
        for r in agent
        if r["valid"]
    ]
    steady = _values(samples, "steady", "takeovers")
    return [
        _goal(
            f"kill_leader: data-path gap <= {GAP_GOAL_S:g} s",
            gaps,
            bool(gaps) and max(gaps) <= GAP_GOAL_S,
            f"max {max(gaps, default=0):.2f} s over {len(gaps)} runs",
        ),
        _goal(
            f"kill_leader: >= {SURVIVAL_GOAL:.0%} of TCP connections survive, no reset",
            alive,
            bool(alive) and min(alive) >= SURVIVAL_GOAL and sum(resets) == 0,
            f"min {min(alive, default=0):.1%}, {sum(resets)} resets",
        ),
        _goal(
            f"steady: 0 takeovers in {settings.steady_s:g} s",
            steady,
            sum(steady) == 0,
            f"{sum(steady)} takeovers",
        ),
        _goal(
            f"kill_agent_only: no failover, every connection survives, gap <= {NOISE_GAP_S} s",
            agent_ok,
            all(agent_ok),
            "; ".join(
                f"{r['takeovers']} takeovers, {r['survival']:.1%} survive, gap "
                f"{r['udp_gap_s']:.2f} s, resumed {_s(r['resumed_s'])}"
                for r in agent
            ),
        ),
    ]


def _s(value: float | None) -> str:
    return "never" if value is None else f"after {value:.2f} s"


def summary(met: Sequence[Goal]) -> str:
    marks = {True: "met", False: "NOT met", None: "not measured"}
    return "\n".join(f"- goal {marks[g.met]}: {g.goal} ({g.measured})" for g in met)
