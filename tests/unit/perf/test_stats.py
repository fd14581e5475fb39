"""perf.stats: the schedstat parser, run validation, the ordering self-check, summaries
and ratios (the logic behind every published figure)."""

from __future__ import annotations

import pytest

from perf.stats import (
    EXPECTED_ORDER,
    Run,
    SchedStat,
    check_ordering,
    check_run,
    parse_schedstat,
    ratio,
    summarize,
)

pytestmark = pytest.mark.unit


def run(path: str, cpu_ns: int, *, achieved: float = 200_000, forwarded: int = 1000) -> Run:
    return Run(path, 0, 200_000, 1000, achieved, forwarded, cpu_ns, 100)


def test_schedstat_parser_reads_three_fields_and_subtracts() -> None:
    a = parse_schedstat("450459524 3090534 12612\n")
    b = parse_schedstat("450559524 3090600 12712")
    assert a == SchedStat(450459524, 3090534, 12612)
    assert b - a == SchedStat(100000, 66, 100)


@pytest.mark.parametrize("text", ["", "1 2", "1 2 x", "-1 2 3", "1 2 3 4"])
def test_schedstat_parser_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError, match="three non-negative integers"):
        parse_schedstat(text)


def test_ns_per_packet_and_packets_per_wakeup() -> None:
    r = run("kernel_forward", 2_000_000)
    assert r.ns_per_packet == 2000
    assert r.pkts_per_wakeup == 10
    assert run("x", 5, forwarded=0).ns_per_packet is None


def test_generator_below_offered_rate_makes_the_run_invalid() -> None:
    checked = check_run(run("kernel_forward", 2_000_000, achieved=171_899))
    assert not checked.valid
    assert "171899 pps of 200000" in checked.reason


def test_loss_between_generator_and_sink_makes_the_run_invalid() -> None:
    checked = check_run(run("kernel_forward", 2_000_000, forwarded=900))
    assert not checked.valid and "not counted at the sink" in checked.reason


def test_a_good_run_stays_valid() -> None:
    assert check_run(run("kernel_forward", 2_000_000)).valid


def test_ordering_holds() -> None:
    costs = dict(zip(EXPECTED_ORDER, (700_000, 1_300_000, 1_800_000, 2_500_000), strict=True))
    checked = check_ordering({p: run(p, c) for p, c in costs.items()})
    assert all(r.valid for r in checked.values())


def test_ordering_violation_marks_the_whole_round_invalid() -> None:
    costs = dict(zip(EXPECTED_ORDER, (1_986_000, 1_859_000, 2_700_000, 2_900_000), strict=True))
    checked = check_ordering({p: run(p, c) for p, c in costs.items()})
    assert not any(r.valid for r in checked.values())
    assert "xdp_drop (1986 ns) >= xdp_fastpath (1859 ns)" in checked["kernel_forward"].reason


def test_ordering_skips_absent_paths() -> None:
    checked = check_ordering(
        {"kernel_forward": run("kernel_forward", 1_800_000),
         "kernel_masquerade": run("kernel_masquerade", 1_700_000)}
    )  # fmt: skip
    assert not checked["kernel_forward"].valid


def test_summary_uses_only_valid_runs() -> None:
    s = summarize([5.0, 1.0, 100.0, 3.0, None], [True, True, False, True, True])
    assert (s.minimum, s.median, s.maximum) == (1.0, 3.0, 5.0)
    assert (s.valid_runs, s.total_runs) == (3, 5)


def test_summary_without_valid_runs_has_no_value() -> None:
    s = summarize([1.0, 2.0], [False, False])
    assert s.median is None and s.valid_runs == 0


def test_ratio() -> None:
    assert ratio(1300.0, 2600.0) == 0.5
    assert ratio(None, 1.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None
