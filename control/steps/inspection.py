"""The inspection step: the config document's ``inspection`` section made real.

Enabled: the engine the policy names (``builtin``: ``python -m nfq engine``;
``suricata``: Suricata 7 in NFQ IPS mode, see :mod:`control.steps.inspection_engines`)
starts first, as a process in its own session, then the queueing rules go in
(:func:`nfq.netfilter.apply`), so a fail-closed policy never queues to nobody.
Disabled: rules out first, then the engine stops. A change of engine stops the old one
before the new one binds the queues.

Rules are checked when the step renders, so a bad rule fails the converge, and the
config API's write (it renders every step before it stores a document), with the
rule's position before anything changes: for ``builtin`` the engine's own parser; for
``suricata`` the subset AWS Network Firewall accepts (:mod:`nfq.suricata.nfw`) and then
``suricata -T`` on the rendered configuration. Domain lists are compiled into rules for
both engines (:mod:`nfq.domains`). ``HOME_NET`` is the policy's when the document sets
it, else the private ranges plus the inside interface's subnets.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from ipaddress import IPv4Network, collapse_addresses
from pathlib import Path
from typing import Any

from control.alerts import STORE as ALERT_STORE
from control.alerts import AlertStream
from control.config import ConfigDocument
from control.steps.base import ConvergeError, Host, RenderError, StepContext
from control.steps.inspection_engines import (
    BuiltinEngine,
    Engine,
    EngineSpec,
    SuricataEngine,
    check_queues_free,
)
from nfq import InspectionPolicy, netfilter
from nfq.domains import compile_domain_lists
from nfq.engine.rules import DEFAULT_VARS, RuleError, iter_rule_lines, load_rules
from nfq.suricata.config import (
    DOMAIN_RULES,
    FILE_RULES,
    INLINE_RULES,
    RULE_HEADER_LINES,
    SuricataPaths,
)
from nfq.suricata.config import write_config as write_suricata_config
from nfq.suricata.nfw import check_rule
from nfq.suricata.validate import SuricataConfigError, check_config

log = logging.getLogger("spectra.control")


@dataclass(frozen=True, slots=True)
class InspectionPart:
    """The policy, its effective HOME_NET, and the interface whose traffic is inspected."""

    policy: InspectionPolicy
    inside: str
    home_net: str


def home_net(policy: InspectionPolicy, host: Host, inside: str) -> str:
    """The policy's HOME_NET if the document sets it, else private ranges + inside subnets."""
    if "vars" in policy.model_fields_set and "HOME_NET" in policy.vars:
        return policy.vars["HOME_NET"]
    nets = [IPv4Network(n) for n in DEFAULT_VARS["HOME_NET"].strip("[]").split(",")]
    with contextlib.suppress(ConvergeError):
        nets += [IPv4Network(n, strict=False) for n in host.networks(inside)]
    return "[" + ",".join(str(n) for n in collapse_addresses(nets)) + "]"


def check_rules(policy: InspectionPolicy) -> None:
    """Parse every rule the policy names; raise :class:`RenderError` on the first bad one."""
    if not policy.enabled:
        return
    for i, rule in enumerate(policy.rules):
        if "\n" in rule or "\r" in rule:
            raise RenderError(f"inspection.rules[{i}]", "one rule per entry, no line breaks")
    if policy.engine == "suricata":
        check_nfw_subset(policy)
        return
    try:
        load_rules((*compile_domain_lists(policy.domain_lists), *policy.rules),
                   policy.rule_files, policy.vars)  # fmt: skip
    except RuleError as exc:
        raise RenderError("inspection.rules", str(exc)) from exc
    except OSError as exc:
        raise RenderError("inspection.rule_files", str(exc)) from exc


def check_nfw_subset(policy: InspectionPolicy) -> None:
    """Every inline and file rule against what AWS Network Firewall accepts."""
    for i, rule in enumerate(policy.rules):
        refusal = check_rule(rule)
        if refusal is not None:
            raise RenderError(f"inspection.rules[{i}]", f"{refusal}: {rule.strip()}")
    for j, path in enumerate(policy.rule_files):
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise RenderError(f"inspection.rule_files[{j}]", str(exc)) from exc
        for line, rule in iter_rule_lines(text):
            refusal = check_rule(rule)
            if refusal is not None:
                raise RenderError(
                    f"inspection.rule_files[{j}]", f"{path} line {line}: {refusal}: {rule}"
                )


def check_with_suricata(policy: InspectionPolicy, home: str) -> None:
    """Render the configuration in a temporary directory and load it with ``suricata -T``."""
    with tempfile.TemporaryDirectory(prefix="spectra-suricata-") as tmp:
        paths = SuricataPaths.under(Path(tmp))
        write_suricata_config(policy, paths, home)
        try:
            check_config(paths.config)
        except SuricataConfigError as exc:
            if "not installed" in str(exc):
                raise RenderError(
                    "inspection.engine",
                    "'suricata' is not installed on this host (make deps, or "
                    "deploy/suricata/install-suricata.sh); accepted here: 'builtin'",
                ) from exc
            raise _rule_error(policy, paths, exc) from exc


def _rule_error(
    policy: InspectionPolicy, paths: SuricataPaths, exc: SuricataConfigError
) -> RenderError:
    """The document field of the first rule Suricata refused, with its position."""
    if not exc.failures:
        return RenderError("inspection", str(exc))
    f = exc.failures[0]
    if Path(f.file) == paths.rule_dir / INLINE_RULES:
        i = f.line - RULE_HEADER_LINES - 1
        return RenderError(f"inspection.rules[{i}]", f"rule {i + 1}: {f.reason}: {f.rule}")
    if Path(f.file) == paths.rule_dir / DOMAIN_RULES:
        return RenderError("inspection.domain_lists", f"{f.reason}: {f.rule}")
    j = next(
        (j for j in range(len(policy.rule_files))
         if Path(f.file) == paths.rule_dir / FILE_RULES.format(j)), 0,
    )  # fmt: skip
    source = policy.rule_files[j] if policy.rule_files else f.file
    return RenderError(
        f"inspection.rule_files[{j}]", f"{source} line {f.line}: {f.reason}: {f.rule}"
    )


class InspectionStep:
    name = "inspection"

    def __init__(self, context: StepContext) -> None:
        self.run_dir = context.run_dir
        self.feed = context.alert_feed
        self.alerts: AlertStream | None = None
        self.engines: dict[str, Engine] = {
            "builtin": BuiltinEngine(context.run_dir, context.log_dir),
            "suricata": SuricataEngine(context.run_dir, context.log_dir),
        }

    @staticmethod
    def render(doc: ConfigDocument, host: Host) -> InspectionPart:
        policy = doc.inspection
        check_rules(policy)
        if not policy.enabled:
            return InspectionPart(policy, doc.interfaces.inside, "")
        home = home_net(policy, host, doc.interfaces.inside)
        if policy.engine == "suricata":
            check_with_suricata(policy, home)
        return InspectionPart(policy, doc.interfaces.inside, home)

    def _running(self) -> list[str]:
        return [name for name, e in self.engines.items() if e.running()]

    def apply(self, part: InspectionPart) -> None:
        policy = part.policy
        running = self._running()
        if not policy.enabled:
            if running:
                netfilter.remove()
                for name in running:
                    self.engines[name].stop()
            return
        ours = frozenset().union(*(self.engines[name].queues() for name in running))
        check_queues_free(policy, ours)  # a collision: refused before anything stops
        engine = self.engines[policy.engine]
        others = [name for name in running if name != policy.engine]
        if others and isinstance(engine, SuricataEngine):
            engine.validate(EngineSpec(policy, part.home_net))  # before the old one stops
        for name in others:
            self.engines[name].stop()
        try:
            engine.apply(EngineSpec(policy, part.home_net))
        except ConvergeError:
            for name in others:  # the engine it was to replace runs again
                other = self.engines[name]
                if isinstance(other, BuiltinEngine):
                    other.resume()
            raise
        netfilter.apply(policy, in_interface=part.inside)

    def tick(self) -> dict[str, Any]:
        """Supervise the running engine (restarts, health, stats); tail its alerts."""
        running = self._running()
        if not running:
            return {"engine": None}
        engine = self.engines[running[0]]
        status = engine.tick()
        if self.alerts is None or self.alerts.eve != engine.eve:
            if self.alerts is not None:
                self.alerts.close()
            self.alerts = AlertStream(
                engine.eve, self.run_dir / ALERT_STORE, engine=running[0], forward=self.feed.offer
            )
        self.alerts.tick(engine.reopen_log)
        status.update(self.alerts.status(), signatures=self.alerts.signatures)
        return status

    def close(self) -> None:
        """Only the alert reader: the engine outlives the agent (adopted on restart)."""
        if self.alerts is not None:
            self.alerts.close()
