"""Per-program cost of the GWLB programs: BPF_PROG_TEST_RUN ns/packet of GENEVE decap and
re-encap against the plain fast path in the same run (what :mod:`perf.progcost` is for
``xdp_gateway``'s packet cases).

Measured (each a median over batches of ``repeat=1`` runs, the harness's own cost
removed by subtracting ``xdp_drop_all`` on the same frame):

* ``decap``: ``xdp_gwlb`` on a GWLB packet (validate, store/refresh header, strip);
* ``encap``: ``tc_gwlb_encap`` on a reverse-NATed 1454-byte reply (lookup, grow, write
  header), gross: the tc test-run allocates an skb per run and no tc no-op baseline
  is subtracted yet;
* ``fastpath``: ``xdp_gateway`` forwarding an offloaded flow (the baseline, 1.0x).

The ratio (decap + encap) / fastpath is the GENEVE two-arm overhead per round trip
packet pair in program time.  CPU per packet in the lab (with the userspace gwlbtun-style
baseline) is the ``geneve`` suite (``python -m perf geneve``), which includes these
figures.
Nothing here needs the lab; it holds ``perf.lab.exclusive()`` anyway so it never
runs beside a lab benchmark.  ``python -m perf.gwlbprogcost --json FILE [--quick]``.
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


def _median_ns(fn: Any, frame: bytes, batches: int, per_batch: int, before: Any = None) -> float:
    means = []
    for _ in range(batches):
        total = 0
        for _ in range(per_batch):
            if before is not None:
                before()
            total += fn(frame)
        means.append(total / per_batch)
    return float(statistics.median(means))


def measure(batches: int = 7, per_batch: int = 2000) -> dict[str, Any]:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether

    from geneve import Gwlb, GwlbBuild
    from geneve.testrun import run_tc
    from tests.bpf.geneve.cases import CASES_BY_NAME, GWLB_MAC, LOCAL_MAC, SERVER, WORKLOAD
    from tests.fixtures.packets import CASES as XDP_CASES
    from tests.fixtures.packets import EGRESS_IFINDEX
    from xdp import BuildOptions, Dataplane
    from xdp.testrun import run

    pin_root = Path("/sys/fs/bpf/spectra-perf")
    gwlb = Gwlb(f"perf-{os.getpid()}", "lo", build=GwlbBuild(1024), pin_root=pin_root).load()
    dp = Dataplane.load(
        f"perf-{os.getpid()}", BuildOptions(flow_table_size=4096), pin_root=pin_root
    )
    try:
        gwlb.configure(local_addr="172.16.1.2")
        decap_frame = CASES_BY_NAME["aws_order_1_2_3_tcp"].input_bytes()
        reply = bytes(
            Ether(src=LOCAL_MAC, dst=GWLB_MAC)
            / IP(src=SERVER, dst=WORKLOAD, ttl=63)
            / TCP(sport=80, dport=40000, flags="A")
            / (b"x" * 1400)
        )
        xdp_fd = gwlb.program_fd("xdp_gwlb")
        tc_fd = gwlb.program_fd("tc_gwlb_encap")
        drop_fd = dp.program_fd("xdp_drop_all")
        run(xdp_fd, decap_frame)  # learn the header

        def xdp_ns(fd: int) -> Any:
            return lambda frame: run(fd, frame).duration_ns

        fast_case = next(c for c in XDP_CASES if c.reason.name == "REDIRECT")
        dp.set_tx_port(EGRESS_IFINDEX)
        for flow in fast_case.flows:
            dp.add_flow(flow.key, flow.entry)
        fast_frame = fast_case.input_bytes()
        results: dict[str, Any] = {
            "decap_ns": _median_ns(xdp_ns(xdp_fd), decap_frame, batches, per_batch),
            "decap_baseline_ns": _median_ns(xdp_ns(drop_fd), decap_frame, batches, per_batch),
            "encap_ns": _median_ns(
                lambda f: run_tc(tc_fd, f).duration_ns, reply, batches, per_batch
            ),
            "fastpath_ns": _median_ns(
                xdp_ns(dp.program_fd("xdp_gateway")), fast_frame, batches, per_batch
            ),
            "fastpath_baseline_ns": _median_ns(xdp_ns(drop_fd), fast_frame, batches, per_batch),
        }
    finally:
        gwlb.destroy()
        dp.destroy()
    decap = results["decap_ns"] - results["decap_baseline_ns"]
    fast = results["fastpath_ns"] - results["fastpath_baseline_ns"]
    results |= {
        "decap_net_ns": decap,
        "fastpath_net_ns": fast,
        "decap_vs_fastpath": decap / fast if fast > 0 else None,
        "encap_vs_fastpath_gross": results["encap_ns"] / results["fastpath_ns"],
        "note": "encap is gross (tc test-run skb allocation included, no tc no-op baseline "
        "yet); decap and fastpath are net of the xdp_drop_all harness baseline on the same "
        "frame; fastpath = the REDIRECT case of tests/fixtures/packets.py; repeat=1 per run.",
    }
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m perf.gwlbprogcost", description=__doc__.split("\n")[0]
    )
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    from perf.lab import exclusive

    started = time.monotonic()
    with exclusive():
        results = measure(*((3, 500) if args.quick else (7, 2000)))
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"suite": "geneve", "results": results}, indent=2))
    for k, v in results.items():
        print(f"{k:28} {v:.1f}" if isinstance(v, float) else f"{k:28} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
