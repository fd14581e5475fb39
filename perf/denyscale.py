"""Deny lists at blocklist scale: the time to replace 100,000 CIDRs, and what a loaded
list costs the established-flow fast path, against no list in the same run.

Measured through BPF_PROG_TEST_RUN (``repeat=1`` per run, median over batches):

* ``replace_s``: :meth:`xdp.Dataplane.set_deny_rules` with one deny rule naming an IP
  set of 100,000 mixed-length CIDRs (``tests/fixtures/blocklist.py``) plus the three
  rules of ``tests/fixtures/packets.py``, alternating two different sets (each replace
  writes one generation and clears the other); goal <= 1 s;
* ``established_ns``: ``xdp_gateway`` on ``tcp_established_outbound_snat`` (an
  offloaded flow, redirected) with no deny rules (the baseline) and with the 100,000-CIDR
  set loaded (every deny lookup runs: the rule matches any protocol), and
  ``xdp_drop_all`` on the same frame (the harness's own cost), in interleaved batches
  (the list swapped between them); goals: loaded / none
  <= 1.2 (gross; the net ratio subtracts the harness), and the established flow
  against ``xdp_drop_all`` <= 2.0 with no rules and with the 100,000 CIDRs;
* ``nft_replace_s``: the nftables side of the same replace: the product's ruleset
  (``control.steps.nftables.render_nftables`` of a document whose deny rule names a
  100,000-CIDR IP set) applied with ``control.nftables.apply_ruleset`` in a scratch
  network namespace, alternating two different sets; wall time and the CPU time of
  ``nft`` itself (the machine may be shared); goal <= 1 s.

Nothing here needs the lab; it holds ``perf.lab.exclusive()`` so it never runs beside
a lab benchmark.  ``python -m perf.denyscale --json FILE [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

GOAL_REPLACE_S = 1.0
GOAL_RATIO = 1.2
GOAL_VS_DROP = 2.0
SET_SIZE = 100_000
NFT_NETNS = "spectra-denyscale"


def _batch_ns(prog_fd: int, frame: bytes, per_batch: int) -> float:
    from xdp.testrun import run

    return sum(run(prog_fd, frame).duration_ns for _ in range(per_batch)) / per_batch


def measure(batches: int = 7, per_batch: int = 2000, replaces: int = 5) -> dict[str, Any]:
    from tests.fixtures.blocklist import blocklist
    from tests.fixtures.packets import CASES, DENY_RULES, EGRESS_IFINDEX, TEST_IFINDEX
    from xdp import BuildOptions, Dataplane, DenyRule

    case = next(c for c in CASES if c.name == "tcp_established_outbound_snat")
    feeds = [blocklist(SET_SIZE, seed=s) for s in (1, 2)]
    dp = Dataplane.load(
        f"perf-deny-{os.getpid()}",
        BuildOptions(flow_table_size=4096),
        pin_root=Path("/sys/fs/bpf/spectra-perf"),
    )
    try:
        dp.set_tx_port(EGRESS_IFINDEX)
        dp.set_deny_scope(TEST_IFINDEX, [])  # the frames "arrive on the inside"
        for flow in case.flows:
            dp.add_flow(flow.key, flow.entry)
        frame = case.input_bytes()
        gateway, drop = dp.program_fd("xdp_gateway"), dp.program_fd("xdp_drop_all")
        took = []
        for i in range(replaces):
            rules = [DenyRule(dst_set=feeds[i % 2]), *DENY_RULES]
            start = time.monotonic()
            dp.set_deny_rules(rules)
            took.append(time.monotonic() - start)
        # Interleaved batches (no list, the list, the harness alone) so a shared host's
        # drift in load hits all three alike; the list is swapped between batches.
        none_b: list[float] = []
        loaded_b: list[float] = []
        drop_b: list[float] = []
        for _ in range(batches):
            dp.set_deny_rules([])
            none_b.append(_batch_ns(gateway, frame, per_batch))
            drop_b.append(_batch_ns(drop, frame, per_batch))
            dp.set_deny_rules([DenyRule(dst_set=feeds[0]), *DENY_RULES])
            loaded_b.append(_batch_ns(gateway, frame, per_batch))
            drop_b.append(_batch_ns(drop, frame, per_batch))
        none_ns, loaded_ns, drop_ns = (
            float(statistics.median(b)) for b in (none_b, loaded_b, drop_b)
        )
        verdict_drops = dp.counters()["deny_rules"]
    finally:
        dp.destroy()
    ratio = loaded_ns / none_ns
    net = (loaded_ns - drop_ns) / (none_ns - drop_ns) if none_ns > drop_ns else None
    return {
        "set_size": SET_SIZE,
        "replace_s": {"median": statistics.median(took), "max": max(took), "runs": took},
        "replace_goal_s": GOAL_REPLACE_S,
        "replace_met": max(took) <= GOAL_REPLACE_S,
        "established_ns_no_rules": none_ns,
        "established_ns_100k": loaded_ns,
        "drop_all_ns": drop_ns,
        "ratio_100k_vs_none": ratio,
        "ratio_net_of_harness": net,
        "ratio_goal": GOAL_RATIO,
        "ratio_met": ratio <= GOAL_RATIO,
        "vs_drop_all_no_rules": none_ns / drop_ns,
        "vs_drop_all_100k": loaded_ns / drop_ns,
        "vs_drop_all_goal": GOAL_VS_DROP,
        "vs_drop_all_met": max(none_ns, loaded_ns) / drop_ns <= GOAL_VS_DROP,
        "deny_drops_during_run": len(verdict_drops),  # 0: the flow was never denied
        "batches_ns": {"no_rules": none_b, "100k": loaded_b, "drop_all": drop_b},
    }


def nft_replaces(replaces: int) -> dict[str, Any]:
    """In the current network namespace: ``replaces`` applies of the product's ruleset
    with a 100,000-CIDR deny set, alternating two sets (the first apply creates the
    table and is not counted)."""
    import resource

    from control.config import parse_document
    from control.nftables import apply_ruleset
    from control.steps.nftables import render_nftables
    from tests.fixtures.blocklist import blocklist
    from xdp.prefixes import prefix_str

    scripts = []
    render_s = []
    for seed in (1, 2):
        doc = {
            "interfaces": {"inside": "inside", "outside": "outside", "data_plane": "xdp"},
            "rules": {
                "ip_sets": {"feed": {"cidrs": [prefix_str(p) for p in blocklist(SET_SIZE, seed)]}},
                "entries": [{"action": "deny", "dst_set": "feed", "comment": "blocklist"}],
            },
        }
        start = time.monotonic()
        scripts.append(render_nftables(parse_document(doc), ["203.0.113.2"]))
        render_s.append(time.monotonic() - start)
    apply_ruleset(scripts[1])
    wall, cpu = [], []
    for i in range(replaces):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.monotonic()
        apply_ruleset(scripts[i % 2])
        wall.append(time.monotonic() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return {
        "wall": {"median": statistics.median(wall), "max": max(wall), "runs": wall},
        "nft_cpu": {"median": statistics.median(cpu), "max": max(cpu), "runs": cpu},
        "parse_and_render_s": render_s,
    }


def measure_nft(replaces: int) -> dict[str, Any]:
    """:func:`nft_replaces` in a scratch network namespace (a child process)."""
    import subprocess

    name = f"{NFT_NETNS}-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        proc = subprocess.run(
            ["ip", "netns", "exec", name, sys.executable, "-m", "perf.denyscale",
             "--nft-child", str(replaces)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
    result: dict[str, Any] = json.loads(proc.stdout)
    result["goal_s"] = GOAL_REPLACE_S
    result["met"] = result["wall"]["max"] <= GOAL_REPLACE_S
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf.denyscale", description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--nft-child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.nft_child is not None:  # inside the scratch namespace
        print(json.dumps(nft_replaces(args.nft_child)))
        return 0
    if args.json is None:
        p.error("--json FILE is required")
    from perf.lab import exclusive

    started = time.monotonic()
    with exclusive():
        results = measure(*((3, 500, 3) if args.quick else (7, 2000, 5)))
        results["nft_replace_s"] = measure_nft(3 if args.quick else 5)
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"suite": "denyscale", "results": results}, indent=2))
    print("| figure | value | goal |\n|---|---|---|")
    print(
        f"| replace 100k CIDRs, max s | {results['replace_s']['max']:.3f} | <= {GOAL_REPLACE_S} |"
    )
    print(f"| established ns, no rules | {results['established_ns_no_rules']:.1f} | |")
    print(f"| established ns, 100k CIDRs | {results['established_ns_100k']:.1f} | |")
    print(f"| ratio 100k / none | {results['ratio_100k_vs_none']:.2f}x | <= {GOAL_RATIO}x |")
    print(f"| xdp_drop_all ns (harness) | {results['drop_all_ns']:.1f} | |")
    for key, label in (("vs_drop_all_no_rules", "none"), ("vs_drop_all_100k", "100k CIDRs")):
        print(f"| established / drop_all, {label} | {results[key]:.2f}x | <= {GOAL_VS_DROP}x |")
    nft = results["nft_replace_s"]
    print(f"| nft replace 100k, max wall s | {nft['wall']['max']:.3f} | <= {GOAL_REPLACE_S} |")
    print(f"| nft replace 100k, max nft CPU s | {nft['nft_cpu']['max']:.3f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
