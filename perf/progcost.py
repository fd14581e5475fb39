"""Per-program cost: every packet case of ``tests/fixtures/packets.py`` through
BPF_PROG_TEST_RUN, ``repeat=1`` in a loop (with repeat > 1 a rewriting program would
see its own output), against ``xdp_drop_all`` on the same frame as the baseline
(the cost of the test-run harness itself).

Standalone (no lab): ``python -m perf.progcost --json FILE [--quick]`` prints each
case's ns and its ratio to ``xdp_drop_all``; the goal for the established-flow case
(``tcp_established_outbound_snat``) is <= 2.0x (``perf.denyscale`` adds the same ratio
with 100,000 deny CIDRs loaded).  ``--deny-sample-rate N`` measures the deny cases
with the firewall log's XDP sampling on (nobody reads the ring buffer here: past the
rate the bucket suppresses, as it does under a flood)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
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


ESTABLISHED = "tcp_established_outbound_snat"
GOAL_VS_DROP = 2.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.progcost", description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--deny-sample-rate",
        type=int,
        default=0,
        metavar="N",
        help="XDP deny drops sampled per second and CPU (the firewall log's)",
    )
    args = p.parse_args(argv)
    from perf.lab import exclusive

    started = time.monotonic()
    programs = Programs()
    try:
        with exclusive():
            programs.dataplane().set_deny_sample_rate(args.deny_sample_rate)
            costs = measure(programs, *((500, 3) if args.quick else (2000, 7)))
    finally:
        programs.close()
    rows: dict[str, dict[str, Any]] = {
        c.name: {
            "ns": median(c.batches_ns),
            "drop_all_ns": median(c.baseline_batches_ns),
            "ratio": median(c.batches_ns) / median(c.baseline_batches_ns),
            "batches_ns": list(c.batches_ns),
            "baseline_batches_ns": list(c.baseline_batches_ns),
        }
        for c in costs
    }
    established = float(rows[ESTABLISHED]["ratio"])
    results: dict[str, Any] = {
        "cases": rows,
        "established_vs_drop_all": established,
        "goal": GOAL_VS_DROP,
        "met": established <= GOAL_VS_DROP,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"suite": "progcost", "results": results}, indent=2))
    print("| case | ns | xdp_drop_all ns | ratio |\n|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['ns']:.1f} | {row['drop_all_ns']:.1f} | {row['ratio']:.2f}x |")
    print(f"established / drop_all: {established:.2f}x (goal <= {GOAL_VS_DROP}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
