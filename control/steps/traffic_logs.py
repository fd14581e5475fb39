"""The traffic-logs step: ``logging.flow_logs`` and ``logging.firewall_logs`` made real.

Flow logs need the namespace's conntrack accounting and timestamps
(``net.netfilter.nf_conntrack_acct`` and ``nf_conntrack_timestamp``, per network
namespace; they apply to entries created after they are set) and a
:class:`control.flowlog.FlowLogger`; firewall logs need the NFLOG twins of the deny
rules (rendered by :mod:`control.steps.nftables`) and a
:class:`control.firewall_log.FirewallLogger`.  Files go to the instance's log directory
(``flow.jsonl``, ``firewall.jsonl``); ``tick`` reports their counters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control.config import ConfigDocument
from control.config.flowlogs import FirewallLogs, FlowLogs
from control.firewall_log import FirewallLogger
from control.flowlog import FlowLogger, Known
from control.logfile import Rotation
from control.steps.base import Host, StepBase, StepContext

log = logging.getLogger("spectra.control")

SYSCTL = Path("/proc/sys/net/netfilter")
FLOW_FILE, FIREWALL_FILE = "flow.jsonl", "firewall.jsonl"


@dataclass(frozen=True, slots=True)
class TrafficLogsPart:
    """Both logs' settings, the rule comments firewall records name, and the region."""

    flow: FlowLogs
    firewall: FirewallLogs
    comments: tuple[tuple[str, str], ...]
    region: str


def rule_comments(doc: ConfigDocument) -> tuple[tuple[str, str], ...]:
    """(log prefix, comment) of every deny rule (the prefix is the rule's path)."""
    out = [
        (f"rules.entries[{i}]", rule.comment or "")
        for i, rule in enumerate(doc.rules.entries)
        if rule.action == "deny"
    ]
    if doc.rules.default == "deny":
        out.append(("rules.default", "rules.default: deny"))
    return tuple(out)


class TrafficLogsStep(StepBase):
    name = "traffic_logs"

    def __init__(self, context: StepContext, sysctl: Path = SYSCTL) -> None:
        super().__init__(context)
        self.sysctl = sysctl
        self.part: TrafficLogsPart | None = None
        self.flow: FlowLogger | None = None
        self.firewall: FirewallLogger | None = None

    @staticmethod
    def render(doc: ConfigDocument, host: Host) -> TrafficLogsPart:
        zone = host.zone()
        region = zone[:-1] if zone and zone[-1].isalpha() else "-"
        return TrafficLogsPart(
            doc.logging.flow_logs, doc.logging.firewall_logs, rule_comments(doc), region
        )

    def apply(self, part: TrafficLogsPart) -> None:
        old = self.part
        if old is None or (old.flow, old.region) != (part.flow, part.region):
            self._stop_flow()
            if part.flow.enabled:
                for key in ("nf_conntrack_acct", "nf_conntrack_timestamp"):
                    (self.sysctl / key).write_text("1")
                f = part.flow
                self.flow = FlowLogger(
                    Rotation(self.context.log_dir / FLOW_FILE, f.max_bytes, f.keep),
                    sampling=f.sampling,
                    capacity=f.queue,
                    known=Known(instance_id=self.context.instance, region=part.region),
                )
                self.flow.start()
        if old is None or (old.firewall, old.comments) != (part.firewall, part.comments):
            self._stop_firewall()
            if part.firewall.enabled:
                w = part.firewall
                self.firewall = FirewallLogger(
                    Rotation(self.context.log_dir / FIREWALL_FILE, w.max_bytes, w.keep),
                    group=w.group,
                    comments=dict(part.comments),
                )
                self.firewall.start()
        self.part = part

    def _stop_flow(self) -> None:
        if self.flow is not None:
            self.flow.stop()
            self.flow = None

    def _stop_firewall(self) -> None:
        if self.firewall is not None:
            self.firewall.stop()
            self.firewall = None

    def tick(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.flow is not None:
            out["flow_logs"] = {"file": str(self.flow.out.file.rotation.path),
                                **self.flow.counters()}  # fmt: skip
        if self.firewall is not None:
            out["firewall_logs"] = {"file": str(self.firewall.out.file.rotation.path),
                                    **self.firewall.counters()}  # fmt: skip
        return out

    def close(self) -> None:
        self._stop_flow()
        self._stop_firewall()
