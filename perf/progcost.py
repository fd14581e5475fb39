"""Per-program cost: every packet case of ``tests/fixtures/packets.py`` through
BPF_PROG_TEST_RUN, ``repeat=1`` in a loop (with repeat > 1 a rewriting program would
see its own output), against ``xdp_drop_all`` on the same frame as the baseline
(the cost of the test-run harness itself)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from perf.bpf import Programs


@dataclass(frozen=True, slots=True)
class CaseCost:
    name: str
    batches_ns: tuple[float, ...]  # mean ns per packet of each batch
    baseline_batches_ns: tuple[float, ...]


def _install(programs: Programs, case: Any) -> None:
    dp = programs.dataplane()
    programs.clear_flows()
    dp.set_deny_rules(list(case.deny))
    for flow in case.flows:
        dp.add_flow(flow.key, flow.entry)


def _batch(prog_fd: int, frame: bytes, n: int, reinstall: Any) -> float:
    from xdp.testrun import run

    total = 0
    for _ in range(n):
        if reinstall is not None:
            reinstall()
        total += run(prog_fd, frame).duration_ns
    return total / n


def measure(programs: Programs, per_batch: int, batches: int) -> list[CaseCost]:
    """Run every fixture case; raise ImportError when the fixtures are absent."""
    from tests.fixtures.packets import CASES, EGRESS_IFINDEX, TEST_IFINDEX

    dp = programs.dataplane()
    dp.set_tx_port(EGRESS_IFINDEX)
    dp.set_deny_scope(TEST_IFINDEX, [])  # the frames "arrive on the inside"
    gateway, drop = dp.program_fd("xdp_gateway"), dp.program_fd("xdp_drop_all")
    out = []
    try:
        for case in CASES:
            _install(programs, case)
            frame = case.input_bytes()
            reinstall = (lambda c=case: _install(programs, c)) if case.closing_after else None
            costs = tuple(_batch(gateway, frame, per_batch, reinstall) for _ in range(batches))
            base = tuple(_batch(drop, frame, per_batch, None) for _ in range(batches))
            out.append(CaseCost(case.name, costs, base))
    finally:
        programs.clear_flows()
        dp.set_deny_rules([])
    return out


def median(values: tuple[float, ...]) -> float:
    return float(statistics.median(values))
