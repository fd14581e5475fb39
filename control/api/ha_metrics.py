"""Prometheus families of the AWS high-availability side (an agent's ``aws`` status).

Every change of leadership is already a log line, a status event and (with
``aws.notify``) an SNS message; these families make it a metric too, so an alert on
``increase(spectra_lease_takeovers_total[10m]) > 0`` or ``spectra_takeover_ok == 0``
needs no log search -- the alert the users of route-swapping NAT instances ask for.
Labels: ``instance`` and ``az`` (the lease key), bounded by the fleet; each lease
counter of :class:`control.aws.lease.Lease` is exported under its own name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from control.api.metric_values import mapping as _dict
from control.api.metric_values import number as _number

# Lease.counters key -> help text (exported as spectra_lease_<key>_total)
LEASE_COUNTERS = {
    "takeovers": "Leaderships this instance won (acquired, took over, took back).",
    "releases": "Leases this instance gave up (health, hand-over, termination).",
    "lost": "Leases this instance lost (another holder, or it ran out unrenewed).",
    "renew_errors": "Lease renewals the table did not answer.",
    "deferrals": "Expired leases left to a holder whose instance still answered.",
}
FALLBACK_COUNTERS = {
    "adopted": "Other AZs' private routes this leader took (cross-AZ fallback).",
    "returned": "Adopted AZs handed back to their own leader.",
    "errors": "Cross-AZ fallback periods that failed.",
}
PROBE_COUNTERS = {
    "rounds": "Forward probe rounds counted while leading.",
    "failures": "Counted forward probe rounds that no target answered.",
}


def ha_families(instances: Iterable[tuple[str, dict[str, Any]]]) -> Iterator[Metric]:
    """The lease and takeover families, one sample per instance with an ``aws`` side."""
    labels = ["instance", "az"]
    leader = GaugeMetricFamily(
        "spectra_lease_leader", "1 while this instance leads its AZ.", labels=labels
    )
    token = GaugeMetricFamily(
        "spectra_lease_token", "Fencing token of the lease while leading.", labels=labels
    )
    counters = {
        key: CounterMetricFamily(f"spectra_lease_{key}", doc, labels=labels)
        for key, doc in LEASE_COUNTERS.items()
    }
    fallback = {
        key: CounterMetricFamily(f"spectra_cross_az_fallback_{key}", doc, labels=labels)
        for key, doc in FALLBACK_COUNTERS.items()
    }
    ok = GaugeMetricFamily(
        "spectra_takeover_ok",
        "1 when this leader's last takeover (NAT address, Elastic IP, routes) completed, "
        "0 when a step failed (retried every lease period).",
        labels=labels,
    )
    seconds = GaugeMetricFamily(
        "spectra_takeover_seconds", "Duration of the last takeover run.", labels=labels
    )
    probe_ok = GaugeMetricFamily(
        "spectra_forward_probe_ok",
        "1 when the leader's last forward probe (a workload's packet through the forward "
        "chain and source NAT) was answered, 0 when no target answered.",
        labels=labels,
    )
    probe_rounds = {
        key: CounterMetricFamily(f"spectra_forward_probe_{key}", doc, labels=labels)
        for key, doc in PROBE_COUNTERS.items()
    }
    for instance, state in instances:
        aws = _dict(state.get("aws"))
        lease = _dict(aws.get("lease"))
        if not lease:
            continue
        at = [instance, str(lease.get("key") or aws.get("availability_zone") or "")]
        leader.add_metric(at, float(lease.get("state") == "leader"))
        if (value := _number(lease.get("token"))) is not None:
            token.add_metric(at, value)
        for key, family in counters.items():
            if (value := _number(_dict(lease.get("counters")).get(key))) is not None:
                family.add_metric(at, value)
        adopted = _dict(_dict(aws.get("cross_az_fallback")).get("counters"))
        for key, family in fallback.items():
            if (value := _number(adopted.get(key))) is not None:
                family.add_metric(at, value)
        probe = _dict(aws.get("forward_probe"))
        for key, family in probe_rounds.items():
            if (value := _number(probe.get(key))) is not None:
                family.add_metric(at, value)
        last = _dict(probe.get("last"))
        if "ok" in last:
            probe_ok.add_metric(at, float(bool(last["ok"])))
        takeover = _dict(aws.get("takeover"))
        if "ok" in takeover:
            ok.add_metric(at, float(bool(takeover["ok"])))
            if (value := _number(takeover.get("seconds"))) is not None:
                seconds.add_metric(at, value)
    yield from (leader, token, *counters.values(), *fallback.values(), ok, seconds)
    yield from (probe_ok, *probe_rounds.values())
