"""``python -m perf.lab.vpc up|down|status [--json]``: the VPC lab from a shell."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from perf.lab.host import LabError
from perf.lab.vpc.build import VpcLab


def _summary(st: dict[str, Any]) -> str:
    lines = [f"VPC lab: {'up' if st['up'] else 'down'}; endpoint {st['endpoint_url']}"]
    for name, proc in st["processes"].items():
        lines.append(f"  {name:<14} {'pid ' + str(proc['pid']) if proc['pid'] else 'stopped'}")
    for name, az in st.get("azs", {}).items():
        lines.append(
            f"  AZ {name} ({az['zone']}): NAT {az['nat_ip']} on {az['nat_ip_eni']}, "
            f"EIP {az['eip']}, private 0.0.0.0/0 -> {az['private_default_route_eni']}"
        )
    for name, inst in st.get("instances", {}).items():
        enis = ", ".join(f"{eth} {e['ip']} {e['eni_id']}" for eth, e in inst["enis"].items())
        lines.append(f"  {name:<5} {inst['instance_id']} {inst['netns']}: {enis}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.lab.vpc")
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--json", action="store_true", help="print the status as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    lab = VpcLab()
    try:
        with lab.exclusive():
            if args.command == "up":
                st = lab.up()
            elif args.command == "down":
                lab.down()
                st = lab.status()
            else:
                st = lab.status()
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(st, indent=2, default=str) if args.json else _summary(st))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
