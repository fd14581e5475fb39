"""perf.loadgen and perf.ai: the open-loop schedule, latency from the scheduled send
time, percentiles, sustained-rate selection and the result records built from steps."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from perf.ai import (
    BARE,
    DIRECT,
    GATEWAY,
    GATEWAY_REDIS,
    LITELLM,
    Bench,
    CacheStep,
    Outcome,
    Settings,
    Target,
    build_results,
    litellm_config,
    refine_rate,
    sustained,
)
from perf.loadgen import Sample, Step, percentile, run_step, schedule, summarize, sustained_rate
from perf.report import Result

pytestmark = [pytest.mark.unit, pytest.mark.timeout(10)]


def step(
    system: str, rate: float, p50: float, p99: float, *, errors: int = 0, mode: str = "nonstream"
) -> Step:
    return Step(system, mode, rate, 100, errors, p50, p99, p99, 0.1, rate)


# --- schedule and percentiles -------------------------------------------------------------


def test_schedule_is_fixed_rate_from_t0() -> None:
    assert schedule(4, 5, t0=10.0) == [10.0, 10.25, 10.5, 10.75, 11.0]
    with pytest.raises(ValueError, match="rate > 0"):
        schedule(0, 3)


def test_percentile_interpolates_like_numpy() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) is None


def test_the_goal_rate_step_is_long_enough_for_a_p99_of_ten_samples() -> None:
    s = Settings()
    assert s.count(s.goal_rate) >= 1000  # p99 = the 10th-worst request
    assert s.count(10) == s.min_requests and s.count(1000) == round(1000 * s.seconds)
    quick = Settings.quick()
    assert quick.count(quick.goal_rate) == quick.goal_requests < s.count(s.goal_rate)


def test_sample_latency_counts_from_the_scheduled_time_not_the_send_time() -> None:
    s = Sample(scheduled=1.000, sent=1.300, done=1.310)
    assert s.latency_ms == pytest.approx(310.0)
    assert s.lag_ms == pytest.approx(300.0)


def test_summarize_counts_errors_and_excludes_them_from_latency() -> None:
    samples = [Sample(0.0, 0.0, 0.010), Sample(0.1, 0.1, 0.120), Sample(0.2, 0.2, 5.2, "timeout")]
    st = summarize("gateway", "stream", 10, samples)
    assert (st.count, st.errors, st.error_kinds) == (3, 1, {"timeout": 1})
    assert st.p50_ms == pytest.approx(15.0)
    assert st.achieved_rps == pytest.approx(10.0)
    assert not st.passed


# --- the open-loop generator --------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_stalled_server_shows_its_queueing_in_later_requests() -> None:
    """Request 0 blocks the whole process for 200 ms (a server that stops serving); the
    requests due meanwhile are sent late, and their latency includes the wait."""

    async def send(i: int) -> str | None:
        if i == 0:
            time.sleep(0.2)  # blocks the event loop: nothing else is sent meanwhile
        return None

    samples = await run_step(send, rate=100, count=10)
    assert len(samples) == 10
    by_due = sorted(samples, key=lambda s: s.scheduled)
    assert all(s.lag_ms >= 100 for s in by_due[1:10])
    # Request 5 was due 50 ms after request 0 and could only go out ~200 ms after it.
    assert by_due[5].latency_ms >= 140
    assert by_due[9].latency_ms >= 100
    # The schedule itself never moved: still exactly 10 ms apart.
    gaps = [b.scheduled - a.scheduled for a, b in itertools.pairwise(by_due)]
    assert gaps == pytest.approx([0.01] * 9)


@pytest.mark.asyncio
async def test_open_loop_keeps_sending_while_requests_queue() -> None:
    """A server with one slot and a 30 ms service time at 100 rps: open loop keeps the
    offered rate, so the latency of the last request grows with the backlog."""
    slot = asyncio.Semaphore(1)

    async def send(i: int) -> str | None:
        async with slot:
            await asyncio.sleep(0.03)
        return None

    samples = await run_step(send, rate=100, count=10)
    by_due = sorted(samples, key=lambda s: s.scheduled)
    assert max(s.lag_ms for s in by_due) < 25  # sends stayed on schedule
    assert by_due[-1].latency_ms >= 200  # ~10 x 30 ms of service minus 90 ms of schedule


@pytest.mark.asyncio
async def test_exceptions_and_error_results_are_counted_as_errors() -> None:
    async def send(i: int) -> str | None:
        if i == 1:
            raise ConnectionResetError("reset")
        if i == 2:
            raise TimeoutError
        return "http 500" if i == 3 else None

    st = summarize("x", "nonstream", 500, await run_step(send, rate=500, count=5))
    assert st.error_kinds == {"ConnectionResetError": 1, "timeout": 1, "http 500": 1}
    assert (st.count, st.errors) == (5, 3)


@pytest.mark.asyncio
async def test_requests_beyond_the_in_flight_cap_are_errors_not_delays() -> None:
    gate = asyncio.Event()

    async def send(i: int) -> str | None:
        if i == 0:
            await gate.wait()
        return None

    async def release() -> None:
        await asyncio.sleep(0.05)
        gate.set()

    releaser = asyncio.create_task(release())
    samples = await run_step(send, rate=200, count=6, max_in_flight=1)
    await releaser
    st = summarize("x", "nonstream", 200, samples)
    # Request 0 holds the only slot for 50 ms; 1..5 are due within 25 ms: all capped.
    assert (st.count, st.error_kinds) == (6, {"in-flight cap": 5})


# --- sustained rate --------------------------------------------------------------------------


def test_sustained_rate_is_the_highest_rate_with_every_lower_rate_passing() -> None:
    ladder = [step("s", 10, 5, 20), step("s", 50, 5, 40), step("s", 100, 50, 150)]
    assert sustained_rate(ladder) == (50, False)
    # an error fails a step even with a low p99
    assert sustained_rate([step("s", 10, 5, 20), step("s", 50, 5, 20, errors=1)]) == (10, False)
    # p99 exactly at the limit fails
    assert sustained_rate([step("s", 10, 5, 100.0)]) == (0.0, False)
    # passing the top of the ladder is a lower bound
    assert sustained_rate([step("s", 100, 1, 2), step("s", 10, 1, 2)]) == (100, True)
    assert sustained_rate([]) == (0.0, False)


def test_refine_bisects_between_the_last_pass_and_the_first_failure() -> None:
    out = Outcome()
    out.steps += [step(GATEWAY, 500, 2, 9), step(GATEWAY, 850, 2, 20), step(GATEWAY, 1000, 9, 140)]
    assert refine_rate(out, GATEWAY, "nonstream", 0.05) == 920  # (850 + 1000) / 2, 10 rps
    out.steps.append(step(GATEWAY, 920, 2, 30))
    assert refine_rate(out, GATEWAY, "nonstream", 0.05) == 960
    out.steps.append(step(GATEWAY, 960, 9, 150))
    assert refine_rate(out, GATEWAY, "nonstream", 0.05) is None  # 40 <= 5 % of 920
    assert sustained(out, GATEWAY, "nonstream") == (920, False)
    # nothing to refine: nothing failed, the lowest step failed, no such system
    assert refine_rate(out, GATEWAY, "stream", 0.05) is None
    top = Outcome(steps=[step(GATEWAY, 500, 2, 9), step(GATEWAY, 1000, 2, 9)])
    assert refine_rate(top, GATEWAY, "nonstream", 0.05) is None
    low = Outcome(steps=[step(GATEWAY, 500, 2, 900)])
    assert refine_rate(low, GATEWAY, "nonstream", 0.05) is None


@pytest.mark.asyncio
async def test_refine_finds_each_limit_within_the_fraction_interleaved() -> None:
    limits = {GATEWAY: 1_137, GATEWAY_REDIS: 1_012}  # passes below these rates
    ran: list[tuple[str, str, int]] = []

    async def ladder_step(t: Target, mode: str, rate: int, out: Outcome) -> Step:
        ran.append((t.system, mode, rate))
        st = step(t.system, rate, 2, 20 if rate < limits[t.system] else 150, mode=mode)
        out.steps.append(st)
        return st

    out = Outcome()
    for mode in ("nonstream", "stream"):
        for r in (500, 850, 1000, 1200):
            for system, limit in limits.items():
                out.steps.append(step(system, r, 2, 20 if r < limit else 150, mode=mode))
    bench = Bench(Settings(), lambda _: None, None)  # type: ignore[arg-type]
    bench.ladder_step = ladder_step  # type: ignore[method-assign]
    targets = [Target(s, "", {}, None) for s in limits]  # type: ignore[arg-type]
    await bench.refine(targets, out)
    for mode in ("nonstream", "stream"):
        for system, limit in limits.items():
            got, bound = sustained(out, system, mode) or (0.0, True)
            assert not bound and 0.95 * limit <= got < limit, (system, mode, got)
    # round by round: the two systems alternate while both still have a gap
    assert [s for s, m, _ in ran[:4]] == [GATEWAY, GATEWAY_REDIS] * 2
    assert len(ran) <= 2 * 2 * 4


# --- results ---------------------------------------------------------------------------------


def _outcome() -> Outcome:
    out = Outcome()
    for rate, (d, b, g, ll) in {
        50: ((2, 5), (3, 7), (4, 8), (25, 45)),
        100: ((2, 6), (3, 8), (4, 9), (300, 900)),
        500: ((2, 8), (3, 12), (5, 30), None),
    }.items():
        out.steps.append(step(DIRECT, rate, *d))
        out.steps.append(step(BARE, rate, *b))
        out.steps.append(step(GATEWAY, rate, *g))
        if ll is not None:
            out.steps.append(step(LITELLM, rate, *ll))
    out.cache.append(CacheStep("exact_hit", step(GATEWAY, 50, 1.5, 3.0), 0))
    return out


def _get(results: list[Result], metric: str, path: str, **kw: object) -> Result:
    hits = [
        r
        for r in results
        if r.metric == metric and r.path == path and all(getattr(r, k) == v for k, v in kw.items())
    ]
    assert len(hits) == 1, (metric, path, kw, hits)
    return hits[0]


def test_added_latency_is_over_direct_and_compared_with_litellm() -> None:
    results = build_results(_outcome(), Settings(rates=(50, 100, 500)))
    gw = _get(results, "added_p99_ms", "gateway/nonstream", offered_pps=50)
    assert gw.value == 3  # 8 - 5
    assert gw.baseline == "litellm/nonstream" and gw.baseline_value == 40  # 45 - 5
    assert gw.ratio == pytest.approx(3 / 40)
    ll = _get(results, "added_p50_ms", "litellm/nonstream", offered_pps=100)
    assert ll.value == 298 and not ll.valid and "p99 900" in ll.note
    direct = _get(results, "latency_p50_ms", "direct/nonstream", offered_pps=500)
    assert direct.value == 2 and direct.baseline is None


def test_sustained_rates_and_goals() -> None:
    results = build_results(_outcome(), Settings(rates=(50, 100, 500)))
    vs_ll = _get(results, "sustained_rps", "gateway/nonstream", baseline="litellm/nonstream")
    assert (vs_ll.value, vs_ll.baseline_value, vs_ll.ratio) == (500, 50, 10.0)
    assert vs_ll.extra["lower_bound"] is True
    vs_bare = _get(results, "sustained_rps", "gateway/nonstream", baseline="bare_proxy/nonstream")
    assert vs_bare.ratio == 1.0
    p99_goal = _get(results, "goal_added_p99", "gateway/nonstream")
    assert p99_goal.baseline_value == pytest.approx(4.0) and p99_goal.note == "met"
    rate_goal = _get(results, "goal_sustained_rps", "gateway/nonstream", baseline="10 x litellm")
    assert rate_goal.note == "met"
    # the bare proxy passed the whole ladder too: its limit, and so the goal, is unknown
    vs_bare_goal = _get(
        results, "goal_sustained_rps", "gateway/nonstream", baseline="0.8 x bare_proxy"
    )
    assert vs_bare_goal.note.startswith("undetermined: bare_proxy sustained the whole ladder")
    hit = _get(results, "exact_hit_p50_ms", "gateway/nonstream")
    assert hit.baseline_value == 4 and hit.ratio == pytest.approx(0.375) and hit.valid


def test_goal_not_met_and_litellm_unavailable() -> None:
    out = _outcome()
    out.steps = [
        s if s.system != GATEWAY or s.rate != 50 else step(GATEWAY, 50, 9, 30, errors=1)
        for s in out.steps
    ]
    results = build_results(out, Settings())
    assert _get(results, "goal_added_p99", "gateway/nonstream").note == "NOT met"
    # gateway fails at 50 rps -> sustains nothing
    assert (
        _get(results, "goal_sustained_rps", "gateway/nonstream", baseline="0.8 x bare_proxy").note
        == "NOT met"
    )

    out = _outcome()
    out.steps = [s for s in out.steps if s.system != LITELLM]
    out.unavailable[LITELLM] = "pip failed"
    results = build_results(out, Settings())
    assert _get(results, "suite", "litellm").note == "unavailable: pip failed"
    goal = _get(results, "goal_added_p99", "gateway/nonstream")
    assert goal.value == 3 and goal.baseline_value is None and not goal.valid
    assert "not measurable" in goal.note


def test_a_cache_hit_that_reached_the_upstream_is_invalid() -> None:
    out = _outcome()
    out.cache = [CacheStep("semantic_hit", step("gateway_semantic", 50, 2, 4), 3)]
    results = build_results(out, Settings())
    hit = _get(results, "semantic_hit_p99_ms", "gateway_semantic/nonstream")
    assert not hit.valid and "3 upstream calls" in hit.note


def test_litellm_config_points_at_the_fake() -> None:
    text = litellm_config("http://127.0.0.1:1234")
    assert "model: openai/gpt-4o-mini" in text
    assert "api_base: http://127.0.0.1:1234/v1" in text
    assert "master_key:" in text and "database" not in text.lower()


def test_a_retried_step_keeps_its_first_attempt() -> None:
    out = _outcome()
    out.retried.append(step(GATEWAY, 100, 4, 140))
    r = _get(build_results(out, Settings()), "added_p99_ms", "gateway/nonstream", offered_pps=100)
    assert r.valid and r.note == "retried (1st: fails: p99 140 ms >= 100)"
    assert [run.get("retried", False) for run in r.runs] == [False, False, True]


def test_redis_rows_and_goals_against_the_local_backend() -> None:
    out = Outcome()
    for rate, (d, g, r) in {
        100: ((2, 5), (4, 8), (4, 8.2)),
        200: ((2, 6), (4, 9), (4, 9.4)),
        500: ((2, 8), (5, 30), (6, 120)),  # redis fails its last step
    }.items():
        out.steps += [
            step(DIRECT, rate, *d),
            step(GATEWAY, rate, *g),
            step(GATEWAY_REDIS, rate, *r),
        ]
    results = build_results(out, Settings(rates=(100, 200, 500)))
    p99 = _get(results, "goal_redis_added_p99", "gateway_redis/nonstream")
    assert p99.value == pytest.approx(0.4) and p99.baseline_value == 0.5
    assert p99.note == "met" and p99.ratio == pytest.approx(0.8)
    rate = _get(results, "goal_redis_sustained_rps", "gateway_redis/nonstream")
    assert (rate.value, rate.baseline_value) == (200, pytest.approx(450))
    assert rate.note == "NOT met"
    row = _get(results, "sustained_rps", "gateway_redis/nonstream", baseline="gateway/nonstream")
    assert row.ratio == pytest.approx(0.4)
    out.steps = [s for s in out.steps if not (s.system == GATEWAY_REDIS and s.rate == 200)]
    out.steps.append(step(GATEWAY_REDIS, 200, 4, 9.6))  # 0.6 ms over the local p99
    results = build_results(out, Settings(rates=(100, 200, 500)))
    assert _get(results, "goal_redis_added_p99", "gateway_redis/nonstream").note == "NOT met"


def test_the_redis_p99_goal_is_the_median_of_paired_rounds() -> None:
    out = Outcome()
    for rate in (100, 200):
        out.steps += [step(GATEWAY, rate, 4, 8), step(GATEWAY_REDIS, rate, 4, 12)]  # +4
    # rounds: +0.2, +3.0 (a hiccup), -0.1 -> median +0.2, whatever the ladder step said
    for local, redis in ((8.0, 8.2), (8.1, 11.1), (7.9, 7.8)):
        out.paired += [step(GATEWAY, 200, 4, local), step(GATEWAY_REDIS, 200, 4, redis)]
    results = build_results(out, Settings(rates=(100, 200)))
    goal = _get(results, "goal_redis_added_p99", "gateway_redis/nonstream")
    assert goal.value == pytest.approx(0.2) and goal.note == "met"
    assert goal.extra["round_differences_ms"] == pytest.approx([0.2, 3.0, -0.1])
    assert (goal.minimum, goal.maximum) == (pytest.approx(-0.1), pytest.approx(3.0))
    assert len(goal.runs) == 3 and all(r["valid"] for r in goal.runs)
    # no rounds in stream mode: the ladder's step decides
    out.steps += [
        step(GATEWAY, 200, 4, 8, mode="stream"),
        step(GATEWAY_REDIS, 200, 4, 9, mode="stream"),
    ]
    stream = _get(build_results(out, Settings()), "goal_redis_added_p99", "gateway_redis/stream")
    assert stream.value == pytest.approx(1.0) and stream.note == "NOT met"


def test_no_redis_rows_without_the_redis_gateway() -> None:
    results = build_results(_outcome(), Settings(rates=(50, 100, 500)))
    assert not [r for r in results if "redis" in r.metric or "redis" in r.path]
