"""perf.failoverfigures: a failover run's record from the probe's summary, the table's
ratios against the same run's baselines, and the issue's goals judged on the worst run."""

from __future__ import annotations

from typing import Any

import pytest

from perf.failover import parser
from perf.failoverfigures import Fault, Settings, goals, results, sample
from perf.suites import STANDALONE

pytestmark = pytest.mark.unit

LEASE = {"duration_s": 1.5, "skew_margin_s": 0.25}


def _probe(
    survived: int = 200, reset: int = 0, gap_ms: float = 2000.0, **kw: Any
) -> dict[str, Any]:
    return {
        "connections": 200,
        "survived": survived,
        "reset": reset,
        "stalled": 200 - survived - reset,
        "mismatched": 0,
        "errored": 0,
        "never_opened": 0,
        "udp_sent": 2300,
        "udp_received": 2100,
        "udp_gap": {"gap_ms": gap_ms, "lost": int(gap_ms / 10), "first_lost_at_s": 8.0},
        "tcp_max_echo_delay_ms": gap_ms + 40,
        "failures": [],
    } | kw


def _kill(scenario: str, run: int, probe: dict[str, Any], takeovers: int = 1) -> dict[str, Any]:
    fault = Fault("a1", "a2", 1.6, 1.8, 0.14, True, None, takeovers)
    return sample(scenario, run, probe, fault)


def _samples(product_gap_ms: float = 2000.0, agent_takeovers: int = 0) -> list[dict[str, Any]]:
    return [
        _kill("kill_leader", 0, _probe(gap_ms=product_gap_ms)),
        _kill("kill_leader", 1, _probe(survived=199, gap_ms=1800.0)),
        _kill("kill_leader_no_sync", 0, _probe(survived=0, reset=150, gap_ms=4000.0)),
        _kill("kill_agent_only", 0, _probe(gap_ms=10.0), takeovers=agent_takeovers),
        sample("steady", 0, _probe(gap_ms=10.0), Fault(None)),
    ]


def test_a_run_record_has_the_gap_in_seconds_and_survival_as_a_fraction() -> None:
    record = _kill("kill_leader", 0, _probe(survived=199, gap_ms=2860.0))
    assert record["valid"] and record["udp_gap_s"] == 2.86 and record["survival"] == 0.995
    assert (record["new_leader"], record["takeover_done_s"]) == ("a2", 1.8)


def test_a_connection_that_never_opened_or_a_stray_conntrackd_invalidates_the_run() -> None:
    record = sample("kill_leader", 0, _probe(never_opened=3), Fault("a1"))
    assert not record["valid"] and "3 connections never opened" in record["reason"]
    record = sample("kill_leader_no_sync", 0, _probe(), Fault("a1"), stray_conntrackd=["a2"])
    assert not record["valid"] and "conntrackd ran on a2" in record["reason"]


def test_the_product_is_a_ratio_against_the_no_sync_baseline_and_the_lease() -> None:
    rows = {(r.metric, r.path): r for r in results(_samples(), Settings(), LEASE)}
    gap = rows["udp_gap", "kill_leader"]
    assert (gap.value, gap.minimum, gap.maximum) == (1.9, 1.8, 2.0)
    assert gap.baseline == "kill_leader_no_sync" and gap.ratio == pytest.approx(1.9 / 4.0)
    assert rows["udp_gap_vs_lease", "kill_leader"].ratio == pytest.approx(1.9 / 1.75)
    survival = rows["tcp_survival", "kill_leader"]
    assert survival.value == pytest.approx(0.9975) and survival.ratio is None  # baseline 0
    assert not survival.lower_is_better
    assert rows["takeovers", "steady"].value == 0


def test_every_goal_met() -> None:
    met = goals(_samples(), Settings(steady_s=60))
    assert [g.met for g in met] == [True, True, True, True]
    assert met[2].goal == "steady: 0 takeovers in 60 s"


def test_each_goal_is_judged_on_the_worst_run() -> None:
    met = goals(_samples(product_gap_ms=3100.0, agent_takeovers=1), Settings())
    assert [g.met for g in met] == [False, True, True, False]
    assert "max 3.10 s over 2 runs" in met[0].measured
    assert "1 takeovers" in met[3].measured


def test_no_valid_run_is_not_measured_rather_than_met() -> None:
    samples = [sample("steady", 0, _probe(udp_received=0), Fault(None))]
    assert goals(samples, Settings())[2].met is None


def test_registered_as_a_standalone_suite_with_quick_settings() -> None:
    assert STANDALONE["failover"] == "perf.failover"
    args = parser().parse_args(["--json", "x", "--quick"])
    settings = Settings.from_options(args.quick, args.runs, args.steady_seconds)
    assert (settings.runs, settings.steady_s, settings.connections) == (1, 60.0, 200)
    assert Settings.from_options(False, None, None).steady_s == 600.0
