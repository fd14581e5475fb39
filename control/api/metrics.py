"""The config API's ``/metrics``: Prometheus text exposition (format 0.0.4) built with
``prometheus_client`` from the API's own counters and every instance's status.

One :class:`~prometheus_client.CollectorRegistry` per app with two custom collectors:
the API's request and write counters (:class:`ApiMetrics`) and the per-instance status
(:mod:`control.api.status_metrics`), so each family is written once with its ``# TYPE``
line, counters end in ``_total`` and label values are escaped by the library.
Exposition format: https://prometheus.io/docs/instrumenting/exposition_formats/
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from control.api.status_metrics import StatusCollector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WRITE_OUTCOMES = ("committed", "conflict", "invalid")


@dataclass(slots=True)
class ApiMetrics:
    """Counters the API updates as it serves requests (route: the route's template, so
    the label set is bounded by the routes the app declares)."""

    requests: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    writes: Counter[str] = field(default_factory=Counter)
    desired_version: int = 0

    def render(self, status: dict[str, Any]) -> bytes:
        """The exposition of these counters and of ``status`` (the status provider's)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_ApiCollector(self))
        registry.register(StatusCollector(status))
        return generate_latest(registry)


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity: a registry key
class _ApiCollector(Collector):
    metrics: ApiMetrics

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "spectra_api_requests",
            "Config API requests by method, route and status.",
            labels=["method", "route", "status"],
        )
        for (method, route, status), count in sorted(self.metrics.requests.items()):
            requests.add_metric([method, route, str(status)], count)
        yield requests
        writes = CounterMetricFamily(
            "spectra_config_writes", "Config writes by outcome.", labels=["outcome"]
        )
        for outcome in WRITE_OUTCOMES:
            writes.add_metric([outcome], self.metrics.writes[outcome])
        yield writes
        yield GaugeMetricFamily(
            "spectra_config_desired_version",
            "Newest config version in the store.",
            value=self.metrics.desired_version,
        )
