"""Prometheus metric families from the status provider's per-instance state.

Every family carries the ``instance`` label; the other labels are bounded by the
product (XDP drop reasons, deny-rule slots, the document's signature IDs). Each status
key is exported under an explicit type: a key that is not in the tables below is not
exported (a new counter must be added here with its type, never guessed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from control.api.ha_metrics import ha_families
from control.api.metric_values import mapping as _dict
from control.api.metric_values import number as _number

# status section -> (counter keys, gauge keys); exported as spectra_dataplane_<section>_<key>
SECTIONS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "offload": (
        ("offloaded_total", "table_full", "keepalives", "adopted", "no_neighbour",
         "not_forwarded", "bulk_tcp_in_kernel", "events", "resyncs_total", "refresh_failed",
         "destroyed_while_active", "idle_parked", "idle_timeouts"),
        ("active", "gwlb_kernel_path", "gwlb_offloaded", "nat_ports_busiest"),
    ),
    "conntrack": (
        ("insert", "insert_failed", "drop", "early_drop", "clashres", "search_restart"),
        ("count", "max", "buckets"),
    ),
    "inspection": (
        ("engine_restarts", "alerts_total", "packets", "packets_bytes", "packets_accepted",
         "packets_blocked", "packets_rejected", "packets_alerts"),
        ("rules_loaded", "rules_failed"),
    ),
    "cloudwatch": (("published", "batches", "failures", "dropped"), ("queued",)),
    "proxy": (
        ("restarts", "reconfigures", "access_log_rotations"),
        ("running", "healthy", "reconfigure_hold_ms"),
    ),
    # a dotted section is a nested one, exported under its last part
    "traffic_logs.flow_logs": (
        ("flows", "written", "dropped", "write_errors", "sampled_out", "kernel_overflows",
         "kernel_lost", "kernel_redelivered", "writer_stalls", "fastpath_unknown"),
        ("queued", "fastpath_waiting"),
    ),
}  # fmt: skip
RENAMED = {"offloaded_total": "offloaded", "resyncs_total": "resyncs", "alerts_total": "alerts"}
HISTOGRAMS = {
    # family -> (status section, key)
    "spectra_config_apply_seconds": ("", "apply_seconds"),
    "spectra_offload_delay_seconds": ("offload", "install_delay_seconds"),
}


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: a registry key
class StatusCollector(Collector):
    """Yields every family once, with one sample per instance that reports it."""

    status: dict[str, Any]

    def _instances(self) -> list[tuple[str, dict[str, Any]]]:
        return sorted((n, _dict(s)) for n, s in _dict(self.status.get("instances")).items())

    def collect(self) -> Iterator[Metric]:
        yield from self._agent()
        yield from self._xdp()
        yield from self._sections()
        yield from self._histograms()
        yield self._signatures()
        yield self._lb_backends()
        yield from ha_families(self._instances())

    def _agent(self) -> Iterator[Metric]:
        gauges = {
            "applied_version": ("spectra_config_applied_version", "Applied config version."),
            "converged": ("spectra_config_converged", "1 when the applied version converged."),
            "agent_running": ("spectra_agent_running", "1 while the agent process runs."),
        }
        for key, (name, doc) in gauges.items():
            family = GaugeMetricFamily(name, doc, labels=["instance"])
            for instance, state in self._instances():
                if (value := _number(state.get(key))) is not None:
                    family.add_metric([instance], value)
            yield family
        applies = CounterMetricFamily(
            "spectra_config_applies", "Documents converged by the agent.", labels=["instance"]
        )
        errors = GaugeMetricFamily(
            "spectra_config_section_errors",
            "1 per document field whose section failed at apply time (the rest converged).",
            labels=["instance", "field"],
        )
        for instance, state in self._instances():
            if (value := _number(state.get("applies"))) is not None:
                applies.add_metric([instance], value)
            for path in sorted(_dict(state.get("section_errors"))):
                errors.add_metric([instance, str(path)], 1)
        yield applies
        yield errors

    def _xdp(self) -> Iterator[Metric]:
        packets = CounterMetricFamily(
            "spectra_xdp_packets", "XDP packets by verdict reason.", labels=["instance", "reason"]
        )
        octets = CounterMetricFamily(
            "spectra_xdp_bytes", "XDP bytes by verdict reason.", labels=["instance", "reason"]
        )
        deny = CounterMetricFamily(
            "spectra_xdp_deny_rule_packets",
            "Packets dropped by each deny rule (rule: its index in rules.entries).",
            labels=["instance", "rule"],
        )
        flows = GaugeMetricFamily("spectra_xdp_flows", "Fast-path flows.", labels=["instance"])
        capacity = GaugeMetricFamily(
            "spectra_xdp_flow_capacity", "Fast-path flow table size.", labels=["instance"]
        )
        for instance, state in self._instances():
            xdp = _dict(state.get("xdp_counters"))
            for reason, c in sorted(_dict(xdp.get("reasons")).items()):
                packets.add_metric([instance, reason.lower()], _dict(c).get("packets", 0))
                octets.add_metric([instance, reason.lower()], _dict(c).get("bytes", 0))
            for rule, c in sorted(_dict(xdp.get("deny_rules")).items()):
                deny.add_metric([instance, str(rule)], _dict(c).get("packets", 0))
            if (value := _number(xdp.get("flows"))) is not None:
                flows.add_metric([instance], value)
            if (value := _number(xdp.get("flow_capacity"))) is not None:
                capacity.add_metric([instance], value)
        yield from (packets, octets, deny, flows, capacity)

    def _sections(self) -> Iterator[Metric]:
        for section, (counters, gauges) in SECTIONS.items():
            path = section.split(".")
            for key in (*counters, *gauges):
                name = f"spectra_dataplane_{path[-1]}_{RENAMED.get(key, key)}"
                doc = f"{section} {key} (spectra status)."
                family: CounterMetricFamily | GaugeMetricFamily = (
                    GaugeMetricFamily(name, doc, labels=["instance"])
                    if key in gauges
                    else CounterMetricFamily(name, doc, labels=["instance"])
                )
                for instance, state in self._instances():
                    for part in path:
                        state = _dict(state.get(part))
                    value = _number(state.get(key))
                    if value is not None:
                        family.add_metric([instance], value)
                yield family

    def _histograms(self) -> Iterator[Metric]:
        for name, (section, key) in HISTOGRAMS.items():
            family = HistogramMetricFamily(
                name, f"{section or 'agent'} {key} (seconds).", labels=["instance"]
            )
            for instance, state in self._instances():
                hist = _dict((_dict(state.get(section)) if section else state).get(key))
                buckets = hist.get("buckets")
                if not isinstance(buckets, list) or not buckets:
                    continue
                family.add_metric(
                    [instance],
                    buckets=[(_le(le), float(n)) for le, n in buckets],
                    sum_value=float(hist.get("sum", 0.0)),
                )
            yield family

    def _signatures(self) -> Metric:
        """``spectra_inspection_alerts_total{instance,sid,action}`` from the alert stream
        (sids: the document's rules, so bounded)."""
        family = CounterMetricFamily(
            "spectra_inspection_alerts",
            "Inspection alerts and drops by signature and action.",
            labels=["instance", "sid", "action"],
        )
        for instance, state in self._instances():
            sigs = _dict(_dict(state.get("inspection")).get("signatures"))
            for sid, sig in sorted(sigs.items()):
                for action, count in sorted(_dict(_dict(sig).get("actions")).items()):
                    if str(sid).isdigit() and (value := _number(count)) is not None:
                        family.add_metric([instance, str(sid), str(action)], value)
        return family

    def _lb_backends(self) -> Metric:
        """``spectra_lb_backend_healthy{instance,listener,backend}``: 1 healthy or not
        yet checked (in the DNAT map), 0 unhealthy (out of it); bounded by the document's
        listeners and backends (and the target groups' targets)."""
        family = GaugeMetricFamily(
            "spectra_lb_backend_healthy",
            "1 while the L4 load balancer sends new connections to the backend.",
            labels=["instance", "listener", "backend"],
        )
        for instance, state in self._instances():
            listeners = _dict(_dict(state.get("load_balancer")).get("listeners"))
            for listener, entry in sorted(listeners.items()):
                for key, backend in sorted(_dict(_dict(entry).get("backends")).items()):
                    healthy = float(_dict(backend).get("state") != "unhealthy")
                    family.add_metric([instance, str(listener), str(key)], healthy)
        return family


def _le(bound: Any) -> str:
    return "+Inf" if bound == "+Inf" else repr(float(bound))
