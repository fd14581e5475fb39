"""Render suricata.yaml (NFQ IPS mode) and the rule files for an inspection policy.

The template (``templates/suricata.yaml``) holds the fixed structure; only scalars and
pre-rendered YAML lists are substituted (``string.Template``), each value quoted where
YAML could misread it. Rules: the policy's domain lists compiled into rules
(:mod:`nfq.domains`) go to ``spectra-domains.rules``, its inline rules to
``spectra-inline.rules`` (one rule per line after a one-line header, so Suricata's "at
line N" names inline rule N-1); rule sources on disk are copied to
``spectra-file-<j>.rules`` line for line (Suricata's "at line N" is the source's line N).
``HOME_NET`` is the policy's, or the caller's (the inspection step adds the inside
interface's subnets).

Every ``pass`` rule is rendered with Suricata's ``bypass`` keyword added (the document's
rules are not changed). In Suricata 7 a matching ``pass`` rule passes the rest of the
flow, but in NFQ mode every later packet is still queued and verdicted; ``bypass``
makes the verdict carry ``nfq.bypass-mark``, so the flow leaves the queue and the XDP
offloader may take it, as AWS Network Firewall's ``pass`` ends inspection of the flow
(Suricata user guide, "Bypass Keyword" and "NFQ": ``bypass-mark``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template

from nfq.domains import compile_domain_lists
from nfq.marks import SKB_MARK_BYPASS, SKB_MARK_REPEAT
from nfq.policy import InspectionPolicy

INLINE_RULES = "spectra-inline.rules"
DOMAIN_RULES = "spectra-domains.rules"
RULE_HEADER_LINES = 1
PORT_SUFFIX = "_PORTS"
FILE_RULES = "spectra-file-{}.rules"  # the policy's rule_files[j], rendered
_PASS = re.compile(r"^\s*pass\s")
_HAS_BYPASS = re.compile(r"[(;]\s*bypass\s*[;)]")


@dataclass(frozen=True, slots=True)
class SuricataPaths:
    """Where the rendered configuration, logs and the command socket live."""

    config_dir: Path
    rule_dir: Path
    log_dir: Path
    run_dir: Path

    @classmethod
    def under(cls, root: Path) -> SuricataPaths:
        return cls(root / "etc", root / "rules", root / "log", root / "run")

    @property
    def config(self) -> Path:
        return self.config_dir / "suricata.yaml"

    @property
    def eve(self) -> Path:
        return self.log_dir / "eve.json"

    @property
    def socket(self) -> Path:
        return self.run_dir / "suricata-command.socket"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "suricata.pid"


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(value)


def _groups(policy: InspectionPolicy, ports: bool, home_net: str | None = None) -> str:
    values = dict(policy.vars)
    if home_net is not None:
        values["HOME_NET"] = home_net
    if not ports:
        values.setdefault("HOME_NET", "[10.0.0.0/8,172.16.0.0/12,192.168.0.0/16]")
        values.setdefault("EXTERNAL_NET", "!$HOME_NET")
    else:
        values.setdefault("HTTP_PORTS", "80")
    chosen = {k: v for k, v in values.items() if k.endswith(PORT_SUFFIX) == ports}
    return "\n".join(f"    {k}: {_q(v)}" for k, v in sorted(chosen.items()))


def rule_files(policy: InspectionPolicy) -> list[str]:
    names = [DOMAIN_RULES] if policy.domain_lists else []
    names += [INLINE_RULES] if policy.rules else []
    return names + [FILE_RULES.format(j) for j in range(len(policy.rule_files))]


def pass_bypasses(rule: str) -> str:
    """``rule`` with ``bypass;`` before its closing parenthesis if it is a ``pass`` rule
    without it; any other rule as it is."""
    if not _PASS.match(rule) or _HAS_BYPASS.search(rule):
        return rule
    return _add_bypass(rule)


def _add_bypass(text: str) -> str:
    end = text.rfind(")")
    if end < 0:
        return text
    head = text[:end].rstrip()
    return f"{head}{'' if head.endswith(';') else ';'} bypass;{text[end:]}"


def render_rule_file(text: str) -> str:
    """A rule file with :func:`pass_bypasses` applied, line for line (comments, blank
    lines and ``\\``-continued rules keep their line numbers)."""
    out, rule = text.splitlines(), ""
    for n, line in enumerate(out):
        stripped = line.strip()
        if not rule and (not stripped or stripped.startswith("#")):
            continue
        rule += stripped
        if stripped.endswith("\\"):
            continue
        if _PASS.match(rule) and not _HAS_BYPASS.search(rule):
            out[n] = _add_bypass(line)
        rule = ""
    return "".join(f"{line}\n" for line in out)


def render_yaml(policy: InspectionPolicy, paths: SuricataPaths, home_net: str | None = None) -> str:
    template = Template(files("nfq.suricata").joinpath("templates/suricata.yaml").read_text())
    return template.substitute(
        address_groups=_groups(policy, ports=False, home_net=home_net),
        port_groups=_groups(policy, ports=True),
        log_dir=_q(str(paths.log_dir)),
        rule_dir=_q(str(paths.rule_dir)),
        rule_files="\n".join(f"  - {_q(f)}" for f in rule_files(policy)) or "  []",
        repeat_mark=SKB_MARK_REPEAT,
        bypass_mark=SKB_MARK_BYPASS,
        fail_open="yes" if policy.fail_open else "no",
        stream_depth=policy.stream_depth,
        eve_file=_q(str(paths.eve)),
        socket=_q(str(paths.socket)),
        log_file=_q(str(paths.log_dir / "suricata.log")),
    )


def render_inline_rules(policy: InspectionPolicy) -> str:
    header = "# Inline rules of the inspection policy (rendered; do not edit)\n"
    return header + "".join(f"{pass_bypasses(r.strip())}\n" for r in policy.rules)


def render_domain_rules(policy: InspectionPolicy) -> str:
    header = "# The inspection policy's domain lists as rules (rendered; do not edit)\n"
    rules = compile_domain_lists(policy.domain_lists)
    return header + "".join(f"{pass_bypasses(r)}\n" for r in rules)


def write_config(
    policy: InspectionPolicy, paths: SuricataPaths, home_net: str | None = None
) -> list[Path]:
    """Write suricata.yaml and the rendered rule files, each atomically; returns them."""
    written = []
    for directory in (paths.config_dir, paths.rule_dir, paths.log_dir, paths.run_dir):
        directory.mkdir(parents=True, exist_ok=True)
    outputs = {paths.config: render_yaml(policy, paths, home_net)}
    if policy.domain_lists:
        outputs[paths.rule_dir / DOMAIN_RULES] = render_domain_rules(policy)
    if policy.rules:
        outputs[paths.rule_dir / INLINE_RULES] = render_inline_rules(policy)
    for j, source in enumerate(policy.rule_files):
        outputs[paths.rule_dir / FILE_RULES.format(j)] = render_rule_file(source.read_text())
    for path, text in outputs.items():
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        written.append(path)
    return written
