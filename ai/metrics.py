"""The AI gateway's ``/metrics``: Prometheus counters and latency histograms observed
from each request's audit trace (:class:`ai.trace.Trace`), in the text exposition
format (https://prometheus.io/docs/instrumenting/exposition_formats/).

Label sets are bounded: endpoints and cache outcomes are the gateway's own; providers
come from the ``ai`` section; models are the routed ones, capped at ``MAX_MODELS``
distinct values (the rest are counted under ``model="other"``); overflow decisions by
policy and decision (``queued``, ``spilled``, ``rejected``). There is no per-key
label: per-key usage is in the audit log and the budgets (``spectra ai usage``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from ai.trace import Trace

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_MODELS = 64
OTHER = "other"
# seconds: upstream answers take up to minutes; the gateway's own share is milliseconds
UPSTREAM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
ADDED_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class GatewayMetrics:
    """One registry per app; :meth:`observe` once per request (not per overflow child)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._models: set[str] = set()
        self.requests = Counter(
            "spectra_ai_requests",
            "AI gateway requests by endpoint, HTTP status, provider and cache outcome.",
            ["endpoint", "status", "provider", "cache"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "spectra_ai_tokens",
            "Tokens by provider, routed model and kind (prompt, completion, cached).",
            ["provider", "model", "kind"],
            registry=self.registry,
        )
        self.cost = Counter(
            "spectra_ai_cost_usd",
            "Cost charged by provider and routed model (USD).",
            ["provider", "model"],
            registry=self.registry,
        )
        self.overflow = Counter(
            "spectra_ai_overflow_decisions",
            "Overflow decisions of local routes by policy and decision "
            "(queued: served after waiting; spilled: re-run remotely; rejected: 503).",
            ["policy", "decision"],
            registry=self.registry,
        )
        self.upstream = Histogram(
            "spectra_ai_upstream_seconds",
            "Upstream request start to answer end, by provider.",
            ["provider"],
            buckets=UPSTREAM_BUCKETS,
            registry=self.registry,
        )
        self.added = Histogram(
            "spectra_ai_added_latency_seconds",
            "Time the gateway adds to a request (total minus upstream), by endpoint.",
            ["endpoint"],
            buckets=ADDED_BUCKETS,
            registry=self.registry,
        )

    def _model(self, model: str | None) -> str:
        name = model or ""
        if name in self._models or len(self._models) < MAX_MODELS:
            self._models.add(name)
            return name
        return OTHER

    def observe(self, trace: Trace) -> None:
        """Count one finished request from its trace (its ``total`` mark set)."""
        provider = trace.provider or ""
        self.requests.labels(trace.endpoint, str(trace.status), provider, trace.cache).inc()
        marks = trace.latency_ms
        upstream_ms = 0.0
        if "upstream_start" in marks:
            end = marks.get("upstream_done", marks.get("total", marks["upstream_start"]))
            upstream_ms = max(0.0, end - marks["upstream_start"])
            self.upstream.labels(provider).observe(upstream_ms / 1000)
        if "total" in marks:
            self.added.labels(trace.endpoint).observe(max(0.0, marks["total"] - upstream_ms) / 1000)
        if trace.overflow is not None:
            policy, decision = trace.overflow.get("policy"), trace.overflow.get("decision")
            self.overflow.labels(str(policy), str(decision)).inc()
        model = self._model(trace.model_routed)
        if trace.usage is not None:
            for kind, n in (
                ("prompt", trace.usage.prompt_tokens),
                ("completion", trace.usage.completion_tokens),
                ("cached", trace.usage.cached_tokens),
            ):
                self.tokens.labels(provider, model, kind).inc(n)
        if trace.cost_usd:
            self.cost.labels(provider, model).inc(trace.cost_usd)

    def render(self) -> bytes:
        return generate_latest(self.registry)
