"""``python -m nfq``: the built-in engine and the inspection tooling.

    python -m nfq engine --policy inspection.json [--eve FILE] [--stats FILE]
    python -m nfq engine --queues 0:1 --rules FILE --stream-depth 65536 --fail-closed
    python -m nfq check-rules FILE...           # exit 1 with the sid and keyword
    python -m nfq render iptables|nft --policy FILE [--in-interface IF]
    python -m nfq apply --policy FILE [--netns NS] [--in-interface IF]
    python -m nfq remove [--netns NS]
    python -m nfq suricata-config --policy FILE --out DIR

``--policy`` reads an :class:`~nfq.policy.InspectionPolicy` as JSON (the config
document's ``inspection`` object); command-line flags override it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from ai.logsetup import from_env
from nfq import netfilter
from nfq.domains import compile_domain_lists
from nfq.engine.rules import RuleError, load_rules
from nfq.engine.runner import EngineConfig, serve
from nfq.policy import InspectionPolicy, QueueRange


def _policy(path: Path | None) -> InspectionPolicy:
    if path is None:
        return InspectionPolicy()
    return InspectionPolicy.model_validate(json.loads(path.read_text()))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m nfq",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)

    e = sub.add_parser("engine", help="run the built-in inspector on NFQUEUE")
    e.add_argument("--policy", type=Path)
    e.add_argument("--queues", help="N or A:B (default: the policy's)")
    e.add_argument("--rules", type=Path, action="append", default=[], help="rule file")
    e.add_argument("--rule", action="append", default=[], help="inline rule")
    e.add_argument("--var", action="append", default=[], metavar="NAME=VALUE")
    e.add_argument("--stream-depth", type=int)
    e.add_argument(
        "--fail-closed", action="store_true", help="no NFQA_CFG_F_FAIL_OPEN (queue overflow drops)"
    )
    e.add_argument("--eve", type=Path, help="eve.json to append alerts to")
    e.add_argument("--stats", type=Path, help="status JSON (one file per queue: NAME.qN.json)")
    e.add_argument("--copy-range", type=int, default=65535, help="bytes copied per packet")
    e.add_argument("--max-len", type=int, default=16384, help="kernel queue length")

    c = sub.add_parser("check-rules", help="parse rule files; report the first bad rule")
    c.add_argument("files", type=Path, nargs="+")
    c.add_argument("--var", action="append", default=[], metavar="NAME=VALUE")

    r = sub.add_parser("render", help="print the netfilter rules of a policy")
    r.add_argument("backend", choices=("iptables", "nft"))
    r.add_argument("--policy", type=Path)
    r.add_argument("--in-interface")

    a = sub.add_parser("apply", help="install the policy's netfilter rules atomically")
    a.add_argument("--policy", type=Path)
    a.add_argument("--in-interface")
    a.add_argument("--netns")
    a.add_argument("--backend", choices=("iptables", "nft"))

    rm = sub.add_parser("remove", help="remove the product's inspection chains")
    rm.add_argument("--netns")

    s = sub.add_parser("suricata-config", help="render suricata.yaml and rules for a policy")
    s.add_argument("--policy", type=Path)
    s.add_argument("--out", type=Path, required=True)
    return p


def _vars(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--var {item!r}: expected NAME=VALUE")
        out[name] = value
    return out


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from_env("info" if args.verbose else "warning")  # the agent's logging section
    try:
        return _dispatch(args)
    except (RuleError, netfilter.NetfilterError, ValidationError, OSError) as exc:
        print(f"nfq: {exc}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "check-rules":
        rules = load_rules((), args.files, _vars(args.var))
        print(f"{len(rules)} rules OK")
        return 0
    if args.cmd == "remove":
        netfilter.remove(netns=args.netns)
        return 0
    policy = _policy(args.policy)
    if args.cmd == "render":
        if args.backend == "nft":
            print(netfilter.render_nft(policy, in_interface=args.in_interface), end="")
        else:
            print(netfilter.render_iptables(policy, in_interface=args.in_interface), end="")
        return 0
    if args.cmd == "apply":
        used = netfilter.apply(
            policy, in_interface=args.in_interface, netns=args.netns, backend=args.backend
        )
        print(f"applied with {used}")
        return 0
    if args.cmd == "suricata-config":
        from nfq.suricata.config import SuricataPaths, write_config

        for path in write_config(policy, SuricataPaths.under(args.out)):
            print(path)
        return 0
    queues = QueueRange.model_validate(args.queues) if args.queues else policy.queues
    cfg = EngineConfig(
        queues=tuple(queues.numbers),
        rules=(*compile_domain_lists(policy.domain_lists), *policy.rules, *args.rule),
        rule_files=policy.rule_files + tuple(args.rules),
        variables={**policy.vars, **_vars(args.var)},
        stream_depth=policy.stream_depth if args.stream_depth is None else args.stream_depth,
        eve=args.eve,
        stats=args.stats,
        fail_open=policy.fail_open and not args.fail_closed,
        copy_range=args.copy_range,
        max_len=args.max_len,
    )
    return serve(cfg)


if __name__ == "__main__":
    raise SystemExit(main())
