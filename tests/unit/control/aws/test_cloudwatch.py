"""CloudWatch export under NAT Gateway's metric names, through the session factory's
operational role, against moto: counter deltas, batching, failures counted and retried,
a bounded queue."""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from ai.state import SCHEMA
from control.aws import OperationalRole, SessionFactory
from control.aws.cloudwatch import BATCH, CloudWatchExport, ExportSettings
from tests.unit.control.aws.conftest import REGION, admin_client, base_session

ROLE = OperationalRole("gw-cross-account-role1", "ext-id-123", account_id="123456789012")


class Status:
    """The instance status the exporter samples: counters that move between samples."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> dict[str, Any]:
        n = self.n
        self.n += 1
        return {
            "conntrack": {"count": 100 + n, "insert": 1000 + 40 * n,
                          "insert_failed": 5 + 2 * n, "drop": 3 + n},
            "xdp_counters": {"reasons": {
                "REDIRECT": {"packets": 9000 + 900 * n, "bytes": 0},
                "PASS_NO_FLOW": {"packets": 1000 + 100 * n, "bytes": 0},
                "DROP_DENY": {"packets": 10 + 7 * n, "bytes": 0},
            }},
            "inspection": {"alerts_total": 4 + n},
            "offload": {"idle_timeouts": 2 + 3 * n},
        }  # fmt: skip


def links(ifname: str) -> dict[str, int]:
    return {"rx_bytes": 5000, "tx_bytes": 7000, "rx_packets": 50, "tx_packets": 70}


class Clock:
    def __init__(self) -> None:
        self.t = 10.0

    def __call__(self) -> float:
        return self.t


def settings(namespace: str) -> ExportSettings:
    return ExportSettings(namespace, "inside", "outside", (("Gateway", "gw-a"),))


def values(endpoint: str, namespace: str, name: str, **dims: str) -> list[float]:
    cw = admin_client(endpoint, "cloudwatch")
    now = datetime.now(UTC)
    got = cw.get_metric_statistics(
        Namespace=namespace,
        MetricName=name,
        Dimensions=[{"Name": "Gateway", "Value": "gw-a"}]
        + [{"Name": k, "Value": v} for k, v in dims.items()],
        StartTime=now - timedelta(minutes=10),
        EndTime=now + timedelta(minutes=10),
        Period=60,
        Statistics=["Sum"],
    )
    return [p["Sum"] for p in got["Datapoints"]]


def test_nat_gateway_metrics_reach_cloudwatch(moto_endpoint: str) -> None:
    factory = SessionFactory(REGION, moto_endpoint, base=base_session(), role=ROLE)
    namespace = f"Spectra/{uuid.uuid4().hex[:8]}"
    clock = Clock()
    export = CloudWatchExport(
        Status(), lambda: factory.client("cloudwatch"), links=links, ena=lambda _: {},
        clock=clock,
    )  # fmt: skip
    export.configure(settings(namespace))
    export.run_once()  # first sample: gauges only
    clock.t += 60
    export.run_once()
    st = export.status()
    assert st["failures"] == 0 and st["queued"] == 0 and st["published"] > 10
    assert values(moto_endpoint, namespace, "ConnectionEstablishedCount") == [40.0]
    assert values(moto_endpoint, namespace, "ConnectionAttemptCount") == [42.0]
    assert values(moto_endpoint, namespace, "ErrorPortAllocation") == [2.0]
    assert values(moto_endpoint, namespace, "PacketsDropCount") == [8.0]  # 7 XDP + 1 conntrack
    assert values(moto_endpoint, namespace, "DropsByReason", Reason="drop_deny") == [7.0]
    assert values(moto_endpoint, namespace, "FastPathPacketShare") == [
        100.0 * 900 / (900 + 100 + 7)
    ]
    # two samples a minute apart: one or two datapoints, whichever minutes they fell in
    assert sum(values(moto_endpoint, namespace, "ActiveConnectionCount")) == 100.0 + 101.0
    assert values(moto_endpoint, namespace, "BytesOutToDestination") == [0.0]
    assert values(moto_endpoint, namespace, "InspectionAlerts") == [1.0]
    assert values(moto_endpoint, namespace, "IdleTimeoutCount") == [3.0]


class FlakyClient:
    """PutMetricData refused (throttling) ``fail`` times, then recorded."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.sent: list[int] = []

    def put_metric_data(self, Namespace: str, MetricData: list[dict[str, Any]]) -> None:
        if self.fail > 0:
            self.fail -= 1
            error = {"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}
            raise ClientError(error, "PutMetricData")  # type: ignore[arg-type]
        self.sent.append(len(MetricData))


def test_failures_are_counted_and_retried_with_backoff() -> None:
    client, clock = FlakyClient(fail=2), Clock()
    export = CloudWatchExport(Status(), lambda: client, links=links, ena=lambda _: {},
                              clock=clock)  # fmt: skip
    export.configure(settings("Spectra/test"))
    export.run_once()
    assert export.status()["failures"] == 1 and export.status()["queued"] == 1
    assert "Throttling" in (export.last_error or "")
    export.run_once()  # within the backoff: not retried
    assert export.status()["failures"] == 1
    clock.t += 2.5
    export.run_once()
    assert export.status()["failures"] == 2
    clock.t += 60
    export.run_once()  # a new sample and the retry: everything goes out
    st = export.status()
    assert st["queued"] == 0 and st["last_error"] is None and sum(client.sent) == st["published"]


def test_batches_and_a_bounded_queue() -> None:
    client, clock = FlakyClient(fail=10**6), Clock()
    export = CloudWatchExport(Status(), lambda: client, links=links, ena=lambda _: {},
                              clock=clock, max_queue=30)  # fmt: skip
    export.configure(settings("Spectra/test"))
    for _ in range(4):
        export.run_once()
        clock.t += 400
    st = export.status()
    assert st["queued"] == 30 and st["dropped"] > 0  # oldest dropped, and counted
    client.fail = 0
    export.run_once()
    assert export.status()["queued"] == 0 and max(client.sent) <= BATCH


def test_turned_off_drops_the_queue_and_stops_sampling() -> None:
    status, clock = Status(), Clock()
    export = CloudWatchExport(status, lambda: FlakyClient(fail=10**6), links=links,
                              ena=lambda _: {}, clock=clock)  # fmt: skip
    export.configure(settings("Spectra/test"))
    export.run_once()
    export.configure(None)
    assert export.status()["dropped"] == 1 and not export.status()["enabled"]
    clock.t += 120
    export.run_once()
    assert status.n == 1


def test_link_and_ena_counters_of_this_namespace() -> None:
    from control.aws.cloudwatch import ena_counters, link_counters

    lo = link_counters("lo")
    assert set(lo) == {"rx_bytes", "tx_bytes", "rx_packets", "tx_packets"}
    assert link_counters("nosuch0") == {}
    assert ena_counters("lo") == {}  # not ENA: no allowance counters


class Recording:
    """PutMetricData calls recorded as {metric name: [values]}."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def put_metric_data(self, Namespace: str, MetricData: list[dict[str, Any]]) -> None:
        for d in MetricData:
            self.values.setdefault(d["MetricName"], []).append(d["Value"])


def test_ai_gateway_tokens_and_cost_are_published_from_its_meters(tmp_path: Path) -> None:
    state = tmp_path / "ai-state.sqlite3"
    db = sqlite3.connect(state)
    db.executescript(SCHEMA)

    def meter(
        key: str, model: str, requests: int, prompt: int, completion: int, cost: float
    ) -> None:
        db.execute(
            "INSERT INTO meters (key_id, model, requests, prompt_tokens, completion_tokens, "
            "cost_usd) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key_id, model) DO UPDATE SET "
            "requests = requests + excluded.requests, "
            "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
            "completion_tokens = completion_tokens + excluded.completion_tokens, "
            "cost_usd = cost_usd + excluded.cost_usd",
            (key, model, requests, prompt, completion, cost),
        )
        db.commit()

    meter("k1", "gpt-4o-mini", 3, 200, 100, 0.25)
    recorded, clock = Recording(), Clock()
    export = CloudWatchExport(
        Status(), lambda: recorded, links=links, ena=lambda _: {}, clock=clock
    )
    export.configure(replace(settings("Spectra/ai"), ai_state=state))
    export.run_once()  # first sample: gauges only, no AI datum
    assert "AiPromptTokens" not in recorded.values
    meter("k1", "gpt-4o-mini", 2, 50, 40, 0.5)
    meter("k2", "claude-sonnet-4", 1, 10, 5, 0.125)
    clock.t += 60
    export.run_once()
    db.close()
    assert recorded.values["AiRequests"] == [3.0]
    assert recorded.values["AiPromptTokens"] == [60.0]
    assert recorded.values["AiCompletionTokens"] == [45.0]
    assert recorded.values["AiCostUSD"] == [0.625]
