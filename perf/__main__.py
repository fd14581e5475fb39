"""``python -m perf <suite> --json FILE [--quick] [--plot DIR]``: run a benchmark suite
in the lab (default) or across real hosts given by ``--ingress-dev`` and friends,
print a markdown table, save JSON and optional PNG charts."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from perf import report
from perf.report import Result
from perf.target import Host, PerfError, Target, lab_target
from perf.tools import SUITE_TOOLS, ToolMissing, require

SUITES = ("dataplane", "nfq", "geneve", "ai", "all", "config", "semcache")
# Suites with a command line of their own (they write their own JSON); not in "all".
STANDALONE = {
    "config": "perf.configlatency",  # config change -> applied latency, local and SSM stores
    "semcache": "perf.semcache",  # semantic cache precision / recall on labelled pairs
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m perf", description=__doc__)
    p.add_argument("suite", choices=SUITES)
    p.add_argument("--json", type=Path, required=True, metavar="FILE", help="write results here")
    p.add_argument("--quick", action="store_true", help="3 x 2 s runs; finishes within 2 min")
    p.add_argument("--plot", type=Path, metavar="DIR", help="write PNG charts (matplotlib)")
    p.add_argument("--rate", type=int, default=200_000, help="offered pps (default 200000)")
    p.add_argument("--runs", type=int, help="cpu/packet runs per path (default 5, quick 3)")
    p.add_argument("--seconds", type=float, help="seconds per cpu/packet run (default 5)")
    p.add_argument("--az", default="a", help="lab AZ whose gateway is measured (default a)")
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


def _progress(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def run_dataplane(args: argparse.Namespace, target: Target) -> list[Result]:
    from perf.dataplane import Settings, Suite

    settings = Settings.quick(args.rate) if args.quick else Settings(rate_pps=args.rate)
    overrides: dict[str, Any] = {}
    if args.runs:
        overrides["runs"] = args.runs
    if args.seconds:
        overrides["seconds"] = args.seconds
    if overrides:
        settings = Settings(**{**_fields(settings), **overrides})
    return Suite(target, settings, _progress).run()


def run_nfq(args: argparse.Namespace) -> list[Result]:
    from perf import nfq

    runs = args.runs or (1 if args.quick else 3)
    seconds = args.seconds or (2.0 if args.quick else 4.0)
    return nfq.run(300_000 if args.rate == 200_000 else args.rate, seconds, runs)


def _fields(settings: Any) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in settings.__slots__}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in STANDALONE:
        import importlib

        module = importlib.import_module(STANDALONE[argv[0]])
        code: int = module.main(argv[1:])
        return code
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    suites = ["dataplane", "nfq", "geneve", "ai"] if args.suite == "all" else [args.suite]
    try:
        for suite in suites:
            require(SUITE_TOOLS[suite])
        target = target_from(args)
    except (ToolMissing, PerfError) as exc:
        print(f"perf: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    results: list[Result] = []
    try:
        if "dataplane" in suites:
            results += with_lab(target, lambda: run_dataplane(args, target))
        if "nfq" in suites:
            results += with_lab(target, lambda: run_nfq(args))
        if "geneve" in suites:
            from perf import gwlbcost

            results += with_lab(target, lambda: gwlbcost.run(args, target, _progress))
        if "ai" in suites:
            from perf import ai

            results += ai.run(args.quick, progress=_progress)
    except PerfError as exc:
        print(f"perf: {exc}", file=sys.stderr)
        return 1
    wall = time.monotonic() - started
    doc = report.document(
        args.suite, results, wall_seconds=round(wall, 1), quick=args.quick, lab=target.lab
    )
    report.write_json(doc, args.json)
    print(report.markdown(results))
    print(f"wall time {wall:.0f} s; JSON in {args.json}")
    if args.plot:
        for png in report.plot(results, args.plot, args.suite):
            print(f"chart {png}")
    return 0


def with_lab(target: Target, body: Any) -> list[Result]:
    """Hold the lab, bring it up if needed, and leave it as it was found."""
    if not target.lab:
        result: list[Result] = body()
        return result
    from perf.lab import Lab, LabError, exclusive, require_root

    try:
        require_root()
        with exclusive():
            lab = Lab()
            was_up = bool(lab.status()["up"])
            if not was_up:
                _progress("bringing the lab up (it will be taken down afterwards)")
                lab.up()
            try:
                result = body()
            finally:
                if not was_up:
                    lab.down()
            return result
    except LabError as exc:
        raise PerfError(str(exc)) from exc


if __name__ == "__main__":
    raise SystemExit(main())
