"""Flow and firewall log shipping against moto: records reach CloudWatch Logs in time
order (batches within the PutLogEvents limits) and S3 as gzip JSON lines under the
date/instance key; throttling, AccessDenied and an unreachable endpoint are counted and
retried; a full buffer counts its drops; the document's fields are validated and, without
``--aws``, reported as a section error."""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from control.agent import Agent, AgentSettings
from control.aws.changeset import document_parameters
from control.aws.features import Feature, enabled_features
from control.aws.session import RoleInert
from control.config import ConfigValidationError, parse_document
from control.config.flowlogs import FlowLogs
from control.logfile import RecordLog, Rotation
from control.logship import CloudWatchSink, S3Sink, Shipper
from control.steps import Converger
from control.steps.base import StepContext
from control.steps.traffic_logs import TrafficLogsStep, shipper
from control.store import SqliteStore
from tests.unit.control.aws.conftest import FakeClock, admin_client, base_session
from tests.unit.control.test_converge import FakeHost, Recorder

INTERFACES = {"inside": "inside", "outside": "outside"}


class Counting:
    """A real client whose calls are counted; ``fail`` lists errors raised, in turn,
    by the named operation before it reaches moto."""

    def __init__(self, client: Any, operation: str = "", fail: list[Exception] | None = None):
        self.client = client
        self.operation = operation
        self.fail = list(fail or [])
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Callable[..., Any]:
        real = getattr(self.client, name)

        def call(**kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if name == self.operation and self.fail:
                raise self.fail.pop(0)
            return real(**kwargs)

        return call


def client_error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, operation)


def wait_for(done: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def records(n: int) -> list[dict[str, Any]]:
    return [{"version": 5, "seq": i, "action": "ACCEPT", "note": f"flow {i}"} for i in range(n)]


def log_events(endpoint: str, group: str, stream: str) -> list[dict[str, Any]]:
    logs = admin_client(endpoint, "logs")
    out: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"logGroupName": group, "logStreamName": stream,
                              "startFromHead": True}  # fmt: skip
    while True:
        page = logs.get_log_events(**kwargs)
        out.extend(page["events"])
        if not page["events"]:
            return out
        kwargs["nextToken"] = page["nextForwardToken"]


def test_records_reach_cloudwatch_in_order_and_s3_as_gzip_json_lines(
    moto_endpoint: str, tmp_path: Path
) -> None:
    group, bucket = f"/spectra/{uuid.uuid4().hex[:8]}", f"logs-{uuid.uuid4().hex[:8]}"
    admin_client(moto_endpoint, "s3").create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    doc = parse_document({"interfaces": INTERFACES, "logging": {"flow_logs": {
        "enabled": True, "cloudwatch_log_group": group, "s3_bucket": bucket,
        "s3_prefix": "gw/logs"}}})  # fmt: skip
    made: list[str] = []

    def client(service: str) -> Any:
        made.append(service)
        return admin_client(moto_endpoint, service)

    ship = shipper(doc.logging.flow_logs, "flow", "gw-a", 1000, client)
    assert ship is not None
    out = RecordLog(Rotation(tmp_path / "flow.jsonl", 1 << 20, 2), 1000, "w", ship)
    assert made == []  # clients are built in the shipping thread, not by the step
    out.start()
    sent = records(300)
    for r in sent:
        assert out.offer(r)
    out.stop()

    def shipped() -> tuple[int, int]:  # stop waits 2 s at most: a slow host ships on
        c = out.counters()["shipping"]
        return c["cloudwatch"]["shipped"], c["s3"]["shipped"]

    wait_for(lambda: shipped() == (300, 300))

    events = log_events(moto_endpoint, group, "gw-a/flow")
    assert [json.loads(e["message"]) for e in events] == sent
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps)
    s3 = admin_client(moto_endpoint, "s3")
    (obj,) = s3.list_objects_v2(Bucket=bucket)["Contents"]
    key = re.fullmatch(
        r"gw/logs/flow/(\d{4})/(\d{2})/(\d{2})/gw-a/(\d+)-(\d{6})\.jsonl\.gz", obj["Key"]
    )
    assert key is not None
    got = s3.get_object(Bucket=bucket, Key=obj["Key"])
    lines = gzip.decompress(got["Body"].read()).decode().splitlines()
    assert [json.loads(line) for line in lines] == sent
    counters = out.counters()["shipping"]
    assert counters["cloudwatch"]["shipped"] == counters["s3"]["shipped"] == 300
    assert counters["dropped"] == 0 and counters["cloudwatch"]["errors"] == {}
    assert (tmp_path / "flow.jsonl").read_text().count("\n") == 300  # the file as before


def test_cloudwatch_batches_stay_within_the_putlogevents_limits(moto_endpoint: str) -> None:
    group = f"/spectra/{uuid.uuid4().hex[:8]}"
    client = Counting(admin_client(moto_endpoint, "logs"))
    sink = CloudWatchSink(lambda: client, group, "gw-a/flow")
    pending = [(1_800_000_000_000 + i, f'{{"seq":{i}}}') for i in range(10_050)]
    assert sink.send(pending) == 10_000  # at most 10,000 events per call
    big = "x" * 200_000
    assert sink.send([(1_800_000_000_000, big)] * 8) == 5  # 5 * (200,000 + 26) <= 1 MiB
    assert client.calls["put_log_events"] == 2
    assert client.calls["create_log_group"] == client.calls["create_log_stream"] == 1


def test_throttling_and_access_denied_are_counted_and_retried(
    moto_endpoint: str,
) -> None:
    group = f"/spectra/{uuid.uuid4().hex[:8]}"
    failures: list[Exception] = [
        client_error("ThrottlingException", "PutLogEvents"),
        client_error("ThrottlingException", "PutLogEvents"),
        client_error("AccessDeniedException", "PutLogEvents"),
    ]
    client = Counting(admin_client(moto_endpoint, "logs"), "put_log_events", failures)
    sink = CloudWatchSink(lambda: client, group, "gw-a/firewall")
    ship = Shipper([sink], capacity=100, name="t", backoff=0.02, tick=0.01)
    ship.start()
    now = time.time_ns() // 1_000_000
    for i in range(20):
        assert ship.offer(json.dumps({"seq": i}), now + i)
    wait_for(lambda: ship.counters()["cloudwatch"]["shipped"] == 20)
    ship.stop()
    lane = ship.counters()["cloudwatch"]
    assert lane["errors"] == {"ThrottlingException": 2, "AccessDeniedException": 1}
    assert lane["retries"] == 3 and lane["dropped"] == lane["rejected"] == 0
    assert lane["last_error"].startswith("AccessDeniedException")
    events = log_events(moto_endpoint, group, "gw-a/firewall")
    assert [json.loads(e["message"])["seq"] for e in events] == list(range(20))


def test_an_unreachable_endpoint_is_counted_and_backs_off() -> None:
    config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=0.5)
    dead = base_session().client("logs", endpoint_url="http://127.0.0.1:9", config=config)
    clock = FakeClock()
    sink = CloudWatchSink(lambda: dead, "/spectra/x", "gw-a/flow")
    ship = Shipper([sink], capacity=10, name="t", backoff=1.0, tick=0.01, clock=clock.monotonic)
    ship.start()
    ship.offer("{}", 1)
    wait_for(lambda: ship.counters()["cloudwatch"]["retries"] == 1)
    time.sleep(0.1)  # the clock has not moved: no second try during the backoff
    assert ship.counters()["cloudwatch"]["retries"] == 1
    clock.advance(1.0)
    wait_for(lambda: ship.counters()["cloudwatch"]["retries"] == 2)
    ship.stop()
    lane = ship.counters()["cloudwatch"]
    assert lane["errors"] == {"EndpointConnectionError": 3}  # two, then one try at stop
    assert lane["shipped"] == 0 and lane["pending"] == 1


class _Down:
    name = "cloudwatch"
    rejected = 0

    def __init__(self) -> None:
        self.attempts = 0

    def due(self, pending: list[tuple[int, str]], now: float) -> bool:
        return True

    def send(self, pending: list[tuple[int, str]]) -> int:
        self.attempts += 1
        raise client_error("ServiceUnavailableException", "PutLogEvents")


def test_a_full_buffer_counts_drops_and_never_blocks() -> None:
    ship = Shipper([_Down()], capacity=5, name="t", backoff=60.0, tick=0.01)
    started = time.monotonic()
    offered = [ship.offer("{}", i) for i in range(8)]  # not started: the queue fills
    assert time.monotonic() - started < 0.5
    assert offered == [True] * 5 + [False] * 3
    assert ship.counters()["dropped"] == 3
    ship.start()
    wait_for(lambda: ship.counters()["cloudwatch"]["pending"] == 5)
    for i in range(4):  # the destination is down: the sink's own buffer is full too
        ship.offer("{}", 10 + i)
    wait_for(lambda: ship.counters()["cloudwatch"]["dropped"] == 4)
    ship.stop()
    assert ship.counters()["cloudwatch"]["pending"] == 5


def test_s3_objects_are_cut_by_time_or_size() -> None:
    clock = FakeClock()
    sink = S3Sink(lambda: None, "b", "p/flow", "gw-a", interval=60, max_bytes=1000)
    pending = [(1_800_000_000_000, "{}")]
    assert not sink.due(pending, clock.monotonic())
    clock.advance(59)
    assert not sink.due(pending, clock.monotonic())
    clock.advance(1)
    assert sink.due(pending, clock.monotonic())
    other = S3Sink(lambda: None, "b", "p/flow", "gw-a", interval=60, max_bytes=1000)
    assert not other.due([(1, "x" * 500)], clock.monotonic())
    assert other.due([(1, "x" * 500), (2, "y" * 500)], clock.monotonic())
    assert sink.key(1_800_000_000_000) == "p/flow/2027/01/15/gw-a/1800000000000-000001.jsonl.gz"


def test_fields_are_validated_naming_the_field() -> None:
    def refused(flow: dict[str, Any]) -> str:
        with pytest.raises(ConfigValidationError) as info:
            parse_document({"interfaces": INTERFACES, "logging": {"firewall_logs": flow}})
        return str(info.value)

    assert "logging.firewall_logs.s3_bucket" in refused({"enabled": True, "s3_bucket": "No_Such"})
    assert "cloudwatch_log_group" in refused({"enabled": True, "cloudwatch_log_group": "a b"})
    assert "needs enabled: true" in refused({"cloudwatch_log_group": "/spectra/gw"})
    assert "s3_prefix needs s3_bucket" in refused({"enabled": True, "s3_prefix": "x"})
    assert "logging.firewall_logs.s3_prefix" in refused(
        {"enabled": True, "s3_bucket": "ok-b", "s3_prefix": "/lead"}
    )
    assert not FlowLogs(enabled=True).ships()


def test_shipping_turns_on_observability_and_names_the_bucket() -> None:
    deployment = {"deployment": {"name": "gw", "external_id": "ext-12345678"}}
    doc = parse_document({"interfaces": INTERFACES, "aws": deployment, "logging": {
        "flow_logs": {"enabled": True, "s3_bucket": "gw-logs"}}})  # fmt: skip
    assert Feature.OBSERVABILITY in enabled_features(doc)
    assert document_parameters(doc)["LogBucket"] == "gw-logs"
    plain = parse_document({"interfaces": INTERFACES, "aws": deployment})
    assert Feature.OBSERVABILITY not in enabled_features(plain)
    assert document_parameters(plain)["LogBucket"] == ""
    assert document_parameters(plain)["AuditAnchorBucket"] == ""


def test_s3_audit_anchors_turn_on_observability_and_name_their_bucket() -> None:
    deployment = {"deployment": {"name": "gw", "external_id": "ext-12345678"}}
    audit = {"path": "/var/log/spectra/ai-audit.jsonl", "key": {"env": "AUDIT_KEY"}}
    audit["anchor_s3"] = {"bucket": "gw-audit-anchors"}
    doc = parse_document({"interfaces": INTERFACES, "aws": deployment, "ai": {"audit": audit}})
    assert Feature.OBSERVABILITY in enabled_features(doc)
    assert document_parameters(doc)["AuditAnchorBucket"] == "gw-audit-anchors"


def test_shipping_without_aws_is_a_section_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("control.agent.RUN_ROOT", tmp_path / "run")
    store = SqliteStore(tmp_path / "c.db")
    try:
        agent = Agent(AgentSettings(instance="t", poll_seconds=0.01), store)
        agent.converger = Converger([Recorder("nft", [])], FakeHost())
        logs = {"enabled": True, "cloudwatch_log_group": "/spectra/t", "s3_bucket": "t-logs"}
        doc = {"interfaces": INTERFACES, "logging": {"firewall_logs": logs}}
        store.put(parse_document(doc), 0, "t")
        agent.cycle()
        assert agent.state.converged
        assert sorted(agent.state.section_errors) == [
            "logging.firewall_logs.cloudwatch_log_group",
            "logging.firewall_logs.s3_bucket",
        ]
        assert all("spectra run --aws" in e for e in agent.state.section_errors.values())
        store.put(parse_document({"interfaces": INTERFACES}), 1, "t")
        agent.cycle()
        assert agent.state.section_errors == {}
    finally:
        store.close()


def test_stop_does_not_wait_on_a_hanging_destination() -> None:
    release = threading.Event()

    class Hanging(_Down):
        def send(self, pending: list[tuple[int, str]]) -> int:
            release.wait(5)
            return len(pending)

    ship = Shipper([Hanging()], capacity=5, name="t", tick=0.01)
    ship.start()
    ship.offer("{}", 1)
    started = time.monotonic()
    ship.stop(timeout=0.2)
    assert time.monotonic() - started < 1.0
    release.set()


def test_a_role_that_is_inert_is_counted_and_retried() -> None:
    def no_role() -> Any:
        raise RoleInert("observability role not deployed")

    ship = Shipper([CloudWatchSink(no_role, "/spectra/x", "gw-a/flow")], capacity=5,
                   name="t", backoff=0.01, tick=0.01)  # fmt: skip
    ship.start()
    ship.offer("{}", 1)
    wait_for(lambda: ship.counters()["cloudwatch"]["retries"] >= 2)  # the thread lives on
    ship.stop()
    lane = ship.counters()["cloudwatch"]
    assert set(lane["errors"]) == {"RoleInert"} and lane["pending"] == 1


class _Zone:
    def zone(self) -> str | None:
        return "eu-west-1a"


def test_the_step_ships_through_the_agents_client_only_when_asked(
    moto_endpoint: str, tmp_path: Path
) -> None:
    group = f"/spectra/{uuid.uuid4().hex[:8]}"
    step = TrafficLogsStep(StepContext("gw-b", tmp_path, tmp_path))
    plain = TrafficLogsStep.render(parse_document({"interfaces": INTERFACES}), _Zone())
    assert plain.aws is None  # documents without shipping keep their part as before
    logs = {"enabled": True, "cloudwatch_log_group": group}
    part = TrafficLogsStep.render(
        parse_document({"interfaces": INTERFACES, "logging": {"firewall_logs": logs}}), _Zone()
    )
    assert part.aws is not None
    assert step._ship(part.firewall, "firewall", part.aws) is None  # no --aws: no client
    asked: list[tuple[object, str]] = []

    def client(section: object, service: str) -> Any:
        asked.append((section, service))
        return admin_client(moto_endpoint, service)

    step.aws_client = client
    ship = step._ship(part.firewall, "firewall", part.aws)
    assert ship is not None
    ship.start()
    ship.offer('{"event_type":"drop"}')
    ship.stop()
    wait_for(lambda: ship.counters()["cloudwatch"]["shipped"] == 1)
    assert asked == [(part.aws, "logs")]
    (event,) = log_events(moto_endpoint, group, "gw-b/firewall")
    assert json.loads(event["message"]) == {"event_type": "drop"}


def test_lines_are_sent_in_time_order_when_the_clock_stepped_back() -> None:
    sent: list[tuple[int, str]] = []

    class Capture(_Down):
        def send(self, pending: list[tuple[int, str]]) -> int:
            sent.extend(pending)
            return len(pending)

    ship = Shipper([Capture()], capacity=10, name="t", tick=0.01)
    for ts, line in ((5, "a"), (3, "b"), (3, "c"), (4, "d")):
        ship.offer(line, ts)
    ship.start()
    ship.stop()
    assert sent == [(3, "b"), (3, "c"), (4, "d"), (5, "a")]
