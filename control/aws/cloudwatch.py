"""CloudWatch metrics of one instance, under AWS NAT Gateway's metric names, published
with ``PutMetricData`` from a thread of its own (the agent loop never waits on it).

Every ``period_s`` (60 s, NAT Gateway's own period) the exporter samples the instance's
status (the same data as ``/metrics``), the link counters of the inside and outside
interfaces and, when the driver has them, ENA's allowance counters (``ethtool -S``:
"Monitor network performance for ENA settings on your EC2 instance" in the EC2 user
guide), and turns the counter deltas into datums
("CloudWatch metrics for NAT gateways" in the VPC user guide):

* ``ActiveConnectionCount`` conntrack entries now; ``ConnectionEstablishedCount``
  entries confirmed (conntrack ``insert``); ``ConnectionAttemptCount`` confirmed plus
  refused (``insert_failed``); ``ErrorPortAllocation`` refused for want of a free source
  port (``insert_failed``); ``PacketsDropCount`` XDP drops plus conntrack drops;
* ``BytesOutToDestination`` / ``BytesInFromDestination`` (outside interface transmit /
  receive), ``BytesInFromSource`` / ``BytesOutToSource`` (inside), and the same four as
  ``Packets...``: link counters, so the appliance's own traffic is included;
* the product's own: ``FastPathPacketShare`` (percent of XDP packets redirected by the
  fast path), ``DropsByReason`` (dimension ``Reason``, the XDP drop reasons),
  ``InspectionAlerts``, the ENA counters under their ``ethtool`` names, and the AI
  gateway's ``AiRequests``, ``AiPromptTokens``, ``AiCompletionTokens`` and ``AiCostUSD``
  (increase of its meters, summed over keys and models, read from its state file).

``IdleTimeoutCount``: NATed TCP connections conntrack ended while still established
(they timed out idle, never closed), counted by the event offloader from its DESTROY
events. Datums wait in a bounded
queue; ``PutMetricData`` takes at most ``BATCH`` of them per call; a failed call
(throttling, AccessDenied, an inert role, no network) is counted and retried with
backoff, and when the queue is full the oldest datums are dropped and counted.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from ai.state import read_usage
from control.aws.session import RoleInert

log = logging.getLogger("spectra.aws")

BATCH = 1000  # PutMetricData: at most 1,000 metrics per request
MAX_QUEUE = 20_000
MAX_BACKOFF_S = 300.0
ENA_COUNTERS = (
    "bw_in_allowance_exceeded", "bw_out_allowance_exceeded", "pps_allowance_exceeded",
    "conntrack_allowance_exceeded", "linklocal_allowance_exceeded",
)  # fmt: skip
LINKS = {  # metric: (side, link counter)
    "BytesOutToDestination": ("outside", "tx_bytes"),
    "BytesInFromDestination": ("outside", "rx_bytes"),
    "BytesInFromSource": ("inside", "rx_bytes"),
    "BytesOutToSource": ("inside", "tx_bytes"),
    "PacketsOutToDestination": ("outside", "tx_packets"),
    "PacketsInFromDestination": ("outside", "rx_packets"),
    "PacketsInFromSource": ("inside", "rx_packets"),
    "PacketsOutToSource": ("inside", "tx_packets"),
}
Sample = dict[str, float]  # flat counter name -> value
# the AI gateway's meters (ai.state METER_FIELDS) -> the metric of their increase
AI_METERS = {
    "requests": "AiRequests",
    "prompt_tokens": "AiPromptTokens",
    "completion_tokens": "AiCompletionTokens",
    "cost_usd": "AiCostUSD",
}


@dataclass(frozen=True, slots=True)
class ExportSettings:
    """From the document: ``metrics.cloudwatch_namespace`` and the interfaces."""

    namespace: str
    inside: str
    outside: str
    dimensions: tuple[tuple[str, str], ...]
    ai_state: Path | None = None  # the AI gateway's state file (its meters), when it runs


def ai_totals(path: Path | None) -> dict[str, float]:
    """The AI gateway's meters summed over keys and models (``ai.<field>``), from its
    state file; empty without one."""
    _, meters = read_usage(path)
    out: dict[str, float] = {}
    for rows in meters.values():
        for row in rows:
            for name in AI_METERS:
                out[f"ai.{name}"] = out.get(f"ai.{name}", 0.0) + float(row.get(name) or 0)
    return out


def flat_sample(
    status: Mapping[str, Any],
    links: Mapping[str, Mapping[str, int]],
    ena: Mapping[str, int],
    ai: Mapping[str, float] | None = None,
) -> Sample:
    """The counters the datums are computed from, by name."""
    out: Sample = dict(ai or {})
    conntrack = status.get("conntrack") or {}
    for key in ("count", "insert", "insert_failed", "drop"):
        if isinstance(conntrack.get(key), int):
            out[f"conntrack.{key}"] = conntrack[key]
    reasons = (status.get("xdp_counters") or {}).get("reasons") or {}
    for reason, counter in reasons.items():
        out[f"xdp.{reason}"] = counter.get("packets", 0)
    idle = (status.get("offload") or {}).get("idle_timeouts")
    if isinstance(idle, int):
        out["offload.idle_timeouts"] = idle
    alerts = (status.get("inspection") or {}).get("alerts_total")
    if isinstance(alerts, int):
        out["inspection.alerts"] = alerts
    for side, counters in links.items():
        for key, value in counters.items():
            out[f"link.{side}.{key}"] = value
    for key, value in ena.items():
        out[f"ena.{key}"] = value
    return out


def _delta(prev: Sample, cur: Sample, *keys: str) -> float | None:
    """Increase of the sum of ``keys`` since ``prev``; a counter that went back (a
    reset) counts from zero; ``None`` if a key is missing."""
    if any(k not in cur or k not in prev for k in keys):
        return None
    now, before = sum(cur[k] for k in keys), sum(prev[k] for k in keys)
    return now - before if now >= before else now


def datums(
    prev: Sample | None, cur: Sample, dimensions: list[dict[str, str]], at: datetime
) -> list[dict[str, Any]]:
    """``MetricData`` entries for one period (gauges only on the first sample)."""
    out: list[dict[str, Any]] = []

    def put(name: str, value: float | None, unit: str = "Count", extra: Any = ()) -> None:
        if value is not None:
            dims = [*dimensions, *({"Name": k, "Value": v} for k, v in extra)]
            out.append({"MetricName": name, "Dimensions": dims, "Timestamp": at,
                        "Value": float(value), "Unit": unit})  # fmt: skip

    put("ActiveConnectionCount", cur.get("conntrack.count"))
    if prev is None:
        return out
    put("ConnectionEstablishedCount", _delta(prev, cur, "conntrack.insert"))
    put("ConnectionAttemptCount", _delta(prev, cur, "conntrack.insert", "conntrack.insert_failed"))
    put("ErrorPortAllocation", _delta(prev, cur, "conntrack.insert_failed"))
    drops = sorted(k for k in cur if k.startswith("xdp.DROP_"))
    put("PacketsDropCount", _delta(prev, cur, "conntrack.drop", *drops))
    for key in drops:
        put("DropsByReason", _delta(prev, cur, key), extra=[("Reason", key[4:].lower())])
    for name, (side, counter) in LINKS.items():
        unit = "Bytes" if name.startswith("Bytes") else "Count"
        put(name, _delta(prev, cur, f"link.{side}.{counter}"), unit)
    xdp = sorted(k for k in cur if k.startswith("xdp."))
    total = _delta(prev, cur, *xdp) if xdp else None
    fast = _delta(prev, cur, *(k for k in xdp if k.startswith("xdp.REDIRECT") and "ERROR" not in k))
    if total and fast is not None:
        put("FastPathPacketShare", 100.0 * fast / total, "Percent")
    put("InspectionAlerts", _delta(prev, cur, "inspection.alerts"))
    put("IdleTimeoutCount", _delta(prev, cur, "offload.idle_timeouts"))
    for name, metric in AI_METERS.items():
        put(metric, _delta(prev, cur, f"ai.{name}"), "None" if name == "cost_usd" else "Count")
    for key in ENA_COUNTERS:
        put(key, _delta(prev, cur, f"ena.{key}"))
    return out


def link_counters(ifname: str) -> dict[str, int]:
    """rx/tx bytes and packets of ``ifname`` in this network namespace (netlink)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return {}
        stats = ipr.get_links(found[0])[0].get_attr("IFLA_STATS64") or {}
    keys = ("rx_bytes", "tx_bytes", "rx_packets", "tx_packets")
    return {k: int(stats[k]) for k in keys if k in stats}


def ena_counters(ifname: str) -> dict[str, int]:
    """ENA's allowance counters from ``ethtool -S`` (empty: not ENA, or no ethtool)."""
    ethtool = shutil.which("ethtool")
    if ethtool is None:
        return {}
    try:
        text = subprocess.run(
            [ethtool, "-S", ifname], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.strip().partition(":")
        if name in ENA_COUNTERS and value.strip().isdigit():
            out[name] = int(value)
    return out


class CloudWatchExport:
    """Samples every ``period_s`` and publishes from its own thread; :meth:`status` for
    the agent's state file (and ``/metrics``)."""

    def __init__(
        self,
        status: Callable[[], Mapping[str, Any] | None],
        client: Callable[[], Any],
        *,
        period_s: float = 60.0,
        max_queue: int = MAX_QUEUE,
        links: Callable[[str], dict[str, int]] = link_counters,
        ena: Callable[[str], dict[str, int]] = ena_counters,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._status, self._client, self._links, self._ena = status, client, links, ena
        self.period_s, self._clock = period_s, clock
        self._queue: deque[dict[str, Any]] = deque()
        self._max_queue = max_queue
        self._lock = threading.Lock()
        self._settings: ExportSettings | None = None
        self._prev: Sample | None = None
        self._next_sample: float | None = None
        self._retry_at = 0.0
        self._failures_in_row = 0
        self.counters = {"published": 0, "batches": 0, "failures": 0, "dropped": 0}
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def configure(self, settings: ExportSettings | None) -> None:
        """Publish under ``settings`` from now on (None: stop sampling; queued datums of
        the old namespace are dropped, and counted)."""
        with self._lock:
            if settings != self._settings:
                if self._settings is not None and settings is None:
                    self.counters["dropped"] += len(self._queue)
                    self._queue.clear()
                self._settings, self._prev, self._next_sample = settings, None, None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="spectra-cloudwatch",
                                            daemon=True)  # fmt: skip
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.run_once()

    def run_once(self) -> None:
        """Sample when a period is due, then publish what is queued (unless backing off).
        Never raises: a failure is counted and kept in :attr:`last_error`."""
        try:
            now = self._clock()
            settings = self._settings
            if settings is not None and (self._next_sample is None or now >= self._next_sample):
                self._next_sample = now + self.period_s
                self._sample(settings)
            if self._queue and now >= self._retry_at:
                self._publish(settings)
        except Exception as exc:  # the exporter must never take the agent down
            log.exception("CloudWatch export failed")
            self.last_error = f"{type(exc).__name__}: {exc}"

    def _sample(self, settings: ExportSettings) -> None:
        status = self._status()
        if status is None:
            return
        links = {side: self._links(ifname) for side, ifname in
                 (("inside", settings.inside), ("outside", settings.outside))}  # fmt: skip
        cur = flat_sample(status, links, self._ena(settings.outside), ai_totals(settings.ai_state))
        dims = [{"Name": k, "Value": v} for k, v in settings.dimensions]
        new = datums(self._prev, cur, dims, datetime.now(UTC))
        self._prev = cur
        with self._lock:
            self._queue.extend(new)
            over = len(self._queue) - self._max_queue
            for _ in range(max(0, over)):
                self._queue.popleft()
            self.counters["dropped"] += max(0, over)

    def _publish(self, settings: ExportSettings | None) -> None:
        if settings is None:
            return
        while self._queue:
            batch = [self._queue[i] for i in range(min(BATCH, len(self._queue)))]
            try:
                self._client().put_metric_data(Namespace=settings.namespace, MetricData=batch)
            except (ClientError, BotoCoreError, RoleInert, OSError) as exc:
                self._failed(exc)
                return
            with self._lock:
                for _ in batch:
                    self._queue.popleft()
            self.counters["published"] += len(batch)
            self.counters["batches"] += 1
            self._failures_in_row, self.last_error = 0, None

    def _failed(self, exc: Exception) -> None:
        self.counters["failures"] += 1
        self._failures_in_row += 1
        backoff = min(MAX_BACKOFF_S, 2.0**self._failures_in_row)
        self._retry_at = self._clock() + backoff
        self.last_error = f"PutMetricData: {exc}"
        log.warning("CloudWatch PutMetricData failed (retry in %.0fs): %s", backoff, exc)

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self._settings is not None,
            "namespace": self._settings.namespace if self._settings else None,
            "queued": len(self._queue),
            **self.counters,
            "last_error": self.last_error,
        }
