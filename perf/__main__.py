"""``python -m perf <suite> --json FILE [--quick] [--plot DIR]``: run a benchmark suite
in the lab (default) or across real hosts given by ``--ingress-dev`` and friends,
print a markdown table, save JSON and optional PNG charts. The suites, and what each
needs, are the registry in ``perf/suites.py``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path

from perf import report
from perf.report import Result
from perf.suites import STANDALONE, SUITES
from perf.target import Host, PerfError, Target, lab_target
from perf.tools import ToolMissing, require


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m perf", description=__doc__)
    p.add_argument("suite", choices=(*SUITES, "all", *STANDALONE))
    p.add_argument("--json", type=Path, required=True, metavar="FILE", help="write results here")
    p.add_argument("--quick", action="store_true", help="3 x 2 s runs; finishes within 2 min")
    p.add_argument("--plot", type=Path, metavar="DIR", help="write PNG charts (matplotlib)")
    p.add_argument(
        "--rate",
        type=int,
        help="offered pps (default: the suite's own; dataplane 200000, nfq 300000, geneve 20000)",
    )
    p.add_argument(
        "--runs", type=int, help="runs per path (default: the suite's own; dataplane 5, quick 3)"
    )
    p.add_argument(
        "--seconds", type=float, help="seconds per run (default: the suite's own; dataplane 5)"
    )
    p.add_argument("--az", default="a", help="lab AZ whose gateway is measured (default a)")
    p.add_argument(
        "--phases",
        help="dataplane only: comma-separated phases (rate,dnat,connections,testrun,rr; "
        "default all)",
    )
    real = p.add_argument_group("real hosts (any of these leaves lab mode; see perf/README.md)")
    real.add_argument("--ingress-dev", help="gateway interface facing the generator")
    real.add_argument("--egress-dev", help="gateway interface facing the sink")
    real.add_argument("--gateway-netns", help="network namespace of the gateway (default: none)")
    real.add_argument("--public-ip", help="the gateway's translated source address")
    real.add_argument("--next-hop-ip", help="the gateway's next hop on the egress side")
    real.add_argument("--generator-ssh", help="SSH destination of the generator host")
    real.add_argument("--generator-dev", help="generator's interface toward the gateway")
    real.add_argument("--generator-ip", help="generator's address")
    real.add_argument("--sink-ssh", help="SSH destination of the sink/server host")
    real.add_argument("--sink-dev", help="sink's interface toward the gateway")
    real.add_argument("--service-ip", help="sink address running sockperf and iperf3 servers")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


REAL_FIELDS = (
    "ingress_dev",
    "egress_dev",
    "public_ip",
    "next_hop_ip",
    "generator_ssh",
    "generator_dev",
    "generator_ip",
    "sink_ssh",
    "sink_dev",
    "service_ip",
)


def target_from(args: argparse.Namespace) -> Target:
    given = [f for f in REAL_FIELDS if getattr(args, f)]
    if not given:
        return lab_target(args.az)
    absent = [f"--{f.replace('_', '-')}" for f in REAL_FIELDS if not getattr(args, f)]
    if absent:
        raise PerfError(f"outside the lab every host parameter is needed; missing: {absent}")
    return Target(
        generator=Host(ssh=args.generator_ssh),
        generator_dev=args.generator_dev,
        generator_ip=args.generator_ip,
        gateway=Host(netns=args.gateway_netns),
        ingress_dev=args.ingress_dev,
        egress_dev=args.egress_dev,
        public_ip=args.public_ip,
        next_hop_ip=args.next_hop_ip,
        sink=Host(ssh=args.sink_ssh),
        sink_dev=args.sink_dev,
        service_ip=args.service_ip,
        lab=False,
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in STANDALONE:
        module = importlib.import_module(STANDALONE[argv[0]])
        code: int = module.main(argv[1:])
        return code
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    suites = [SUITES[name] for name in (SUITES if args.suite == "all" else [args.suite])]
    try:
        for suite in suites:
            require(suite.tools)
        target = target_from(args)
    except (ToolMissing, PerfError) as exc:
        print(f"perf: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    results: list[Result] = []
    try:
        for suite in suites:
            results += suite.run(args, target, report.progress)
    except PerfError as exc:
        print(f"perf: {exc}", file=sys.stderr)
        return 1
    summary = "\n".join(filter(None, (suite.summary(results) for suite in suites)))
    report.publish(
        args.suite,
        results,
        args.json,
        started=started,
        summary=summary,
        plot_dir=args.plot,
        quick=args.quick,
        lab=target.lab,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
