"""The traffic-logs step: ``logging.flow_logs`` and ``logging.firewall_logs`` made real.

Flow logs need the namespace's conntrack accounting and timestamps
(``net.netfilter.nf_conntrack_acct`` and ``nf_conntrack_timestamp``, per network
namespace; they apply to entries created after they are set) and a
:class:`control.flowlog.FlowLogger`; firewall logs need the NFLOG twins of the deny
rules (rendered by :mod:`control.steps.nftables`) and a
:class:`control.firewall_log.FirewallLogger`.  Files go to the instance's log directory
(``flow.jsonl``, ``firewall.jsonl``); ``tick`` reports their counters.  With
``cloudwatch_log_group`` or ``s3_bucket`` set, each log's writer also hands its lines to a
:class:`control.logship.Shipper` whose clients come from ``aws_client`` (the operational
role of the document's ``aws`` section; set by ``spectra run --aws``, without it nothing
is shipped and the agent reports the field in ``section_errors``).  The flow log takes
each offloaded flow's fast-path counters from the XDP step's offloader through the
context's :class:`xdp.fastpath_share.FastpathShares`; with
``logging.firewall_logs.inspection`` the inspection step's alerts and drops join the
firewall log through the context's :class:`control.logfile.Feed` (one alert/firewall
stream, shipped with the firewall log's options).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control.config import ConfigDocument
from control.config.aws import Aws as AwsSection
from control.config.flowlogs import FirewallLogs, FlowLogs, Shipping
from control.firewall_log import FirewallLogger
from control.flowlog import FlowLogger, Known
from control.logfile import Rotation
from control.logship import CloudWatchSink, S3Sink, Shipper, Sink
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
    aws: AwsSection | None = None  # only when a log is shipped


def shipper(
    ship: Shipping,
    kind: str,
    instance: str,
    capacity: int,
    client: Callable[[str], Any],
) -> Shipper | None:
    """The shipper of one log (``kind``: flow, firewall), or None when it ships nowhere."""
    if not ship.ships():
        return None
    sinks: list[Sink] = []
    if ship.cloudwatch_log_group:
        group = ship.cloudwatch_log_group
        sinks.append(CloudWatchSink(lambda: client("logs"), group, f"{instance}/{kind}"))
    if ship.s3_bucket:
        sinks.append(
            S3Sink(
                lambda: client("s3"),
                ship.s3_bucket,
                f"{ship.s3_prefix}/{kind}",
                instance,
                interval=ship.s3_interval,
                max_bytes=ship.s3_max_bytes,
            )
        )
    return Shipper(sinks, capacity=capacity, name=f"spectra-{kind}-log-shipper")


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
        # an operational client (section, service) for shipping: set by the agent when it
        # runs on AWS (spectra run --aws)
        self.aws_client: Callable[[AwsSection, str], Any] | None = None

    @staticmethod
    def render(doc: ConfigDocument, host: Host) -> TrafficLogsPart:
        zone = host.zone()
        region = zone[:-1] if zone and zone[-1].isalpha() else "-"
        flow, firewall = doc.logging.flow_logs, doc.logging.firewall_logs
        aws = doc.aws if flow.ships() or firewall.ships() else None
        return TrafficLogsPart(flow, firewall, rule_comments(doc), region, aws)

    def _ship(self, ship: Shipping, kind: str, aws: AwsSection | None) -> Shipper | None:
        make = self.aws_client
        if make is None or aws is None:
            return None
        capacity = ship.queue if isinstance(ship, FlowLogs) else 65536
        return shipper(
            ship, kind, self.context.instance, capacity, lambda service: make(aws, service)
        )

    def apply(self, part: TrafficLogsPart) -> None:
        old = self.part
        flow_aws = part.aws if part.flow.ships() else None
        fw_aws = part.aws if part.firewall.ships() else None
        old_flow_aws = old.aws if old is not None and old.flow.ships() else None
        old_fw_aws = old.aws if old is not None and old.firewall.ships() else None
        if old is None or (old.flow, old.region, old_flow_aws) != (
            part.flow,
            part.region,
            flow_aws,
        ):
            self._stop_flow()
            if part.flow.enabled:
                for key in ("nf_conntrack_acct", "nf_conntrack_timestamp"):
                    (self.sysctl / key).write_text("1")
                f = part.flow
                self.flow = FlowLogger(
                    Rotation(self.context.log_dir / FLOW_FILE, f.max_bytes, f.keep),
                    sampling=f.sampling,
                    capacity=f.queue,
                    reliable=f.reliable,
                    known=Known(instance_id=self.context.instance, region=part.region),
                    ship=self._ship(f, "flow", flow_aws),
                    # only the event offloader settles shares (the dump one: ``-``)
                    shares=self.context.shares if self.context.offloader == "events" else None,
                )
                self.context.shares.enabled = True
                self.flow.start()
        if old is None or (old.firewall, old.comments, old_fw_aws) != (
            part.firewall,
            part.comments,
            fw_aws,
        ):
            self._stop_firewall()
            if part.firewall.enabled:
                w = part.firewall
                self.firewall = FirewallLogger(
                    Rotation(self.context.log_dir / FIREWALL_FILE, w.max_bytes, w.keep),
                    group=w.group,
                    comments=dict(part.comments),
                    ship=self._ship(w, "firewall", fw_aws),
                )
                self.firewall.start()
                self.context.firewall_feed.target = self.firewall.out  # XDP deny samples
                if w.inspection:  # the inspection step's alerts join the stream
                    self.context.alert_feed.target = self.firewall.out
        self.part = part

    def _stop_flow(self) -> None:
        if self.flow is not None:
            self.context.shares.enabled = False
            self.flow.stop()
            self.flow = None
            self.context.shares.clear()

    def _stop_firewall(self) -> None:
        self.context.alert_feed.target = self.context.firewall_feed.target = None
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
