"""The L4 load balancer without a kernel: schema checks (at the API too), the weight
spread of the DNAT maps, the rendered table, probes and hysteresis against real
loopback servers, and the health monitor taking a dead backend out of its set."""

from __future__ import annotations

import http.server
import itertools
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from control.api import ApiSettings, create_app
from control.config import ConfigValidationError, parse_document
from control.lb import SLOTS, Check, LbPart, Target, VirtualService, map_update, render_table, slots
from control.lb_health import Health, HealthMonitor, observe, probe
from control.steps import dry_run
from control.steps.lb import LoadBalancerStep
from control.store import SqliteStore
from tests.promtext import parse, value
from tests.unit.control.conftest import READ_TOKEN, auth, minimal

Client = TestClient[Any, Any]


def lb_doc(**listener: Any) -> dict[str, Any]:
    base = {"name": "web", "port": 9000, "backends": [{"address": "10.0.1.21", "port": 80}]}
    return {**minimal(), "load_balancer": {"enabled": True, "listeners": [base | listener]}}


def errors(doc: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigValidationError) as info:
        parse_document(doc)
    return {e["path"]: e["message"] for e in info.value.errors}


def test_backend_outside_every_network_is_rejected_with_its_field() -> None:
    bad = errors(lb_doc(backends=[{"address": "10.0.1.21", "port": 80},
                                  {"address": "198.51.100.7", "port": 80}]))  # fmt: skip
    assert list(bad) == ["load_balancer.listeners[0].backends[1].address"]
    assert "backend_networks: 10.0.0.0/8, 100.64.0.0/10" in bad[next(iter(bad))]
    doc = lb_doc(backends=[{"address": "198.51.100.7", "port": 80}])
    doc["load_balancer"]["backend_networks"] = ["198.51.100.0/24"]
    assert parse_document(doc).load_balancer.listeners[0].backends[0].port == 80


@pytest.mark.parametrize(
    ("extra", "port", "owner"),
    [
        ({}, 8080, "api.port"),
        ({}, 8090, "ai.listen_port"),
        ({}, 22, "(appliance ssh)"),
        ({"proxy": {"enabled": True}}, 3128, "proxy.port"),
        ({"tls": {"enabled": True, "listeners": [{"name": "t", "port": 8443,
          "certificate_file": "/c.pem", "private_key_file": "/k.pem",
          "backends": [{"address": "10.0.1.9", "port": 80}]}]}}, 8443, "tls.listeners[0].port"),
    ],
)  # fmt: skip
def test_listener_port_colliding_with_a_service_is_rejected(
    extra: dict[str, Any], port: int, owner: str
) -> None:
    bad = errors(lb_doc(port=port) | extra)
    assert bad == {"load_balancer.listeners[0].port": f"tcp/{port} is already used by {owner}"}


def test_port_forward_on_a_listener_port_is_rejected() -> None:
    forward = {"proto": "tcp", "port": 9000, "to_address": "10.0.1.9"}
    bad = errors(lb_doc() | {"port_forwards": [forward]})
    assert bad == {"port_forwards[0].port": "tcp/9000 is already used by "
                   "load_balancer.listeners[0].port"}  # fmt: skip


def test_other_listener_fields_are_checked() -> None:
    assert "load_balancer.listeners[0].algorithm" in errors(lb_doc(algorithm="leastconn"))
    assert "load_balancer.listeners[0].backends" in errors(lb_doc(backends=[]))
    assert "load_balancer.listeners[0].target_group_arn" in errors(
        lb_doc(target_group_arn="arn:aws:acm:eu-west-1:123456789012:certificate/x")
    )
    late = lb_doc(health_check={"interval_seconds": 1, "timeout_seconds": 2})
    assert list(errors(late)) == ["load_balancer.listeners[0].health_check.timeout_seconds"]
    assert "load_balancer.listeners[0].address" in errors(lb_doc(address="everywhere"))


@pytest.mark.asyncio
async def test_api_rejects_a_bad_backend_and_stores_nothing(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
    sqlite_store: SqliteStore,
    api_settings: ApiSettings,
) -> None:
    client = await aiohttp_client(create_app(sqlite_store, lambda: {}, api_settings))
    bad = lb_doc(backends=[{"address": "192.0.2.1", "port": 80}])
    resp = await client.put("/v1/config", json={"document": bad},
                            headers={**auth(), "If-Match": '"0"'})  # fmt: skip
    assert resp.status == 422
    body = await resp.json()
    paths = [d["path"] for d in body["error"]["details"]["errors"]]
    assert paths == ["load_balancer.listeners[0].backends[0].address"]
    assert sqlite_store.head() == 0


@pytest.mark.parametrize("weights", [(1, 1, 1), (1, 2, 3), (5, 1), (256, 1, 7), (1,)])
def test_slots_cover_the_generator_range_in_proportion(weights: tuple[int, ...]) -> None:
    targets = [Target(f"10.0.0.{i}", 80, w) for i, w in enumerate(weights)]
    runs = slots(targets)
    assert runs[0][0] == 0 and runs[-1][1] == SLOTS - 1
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(runs))
    for target in targets:
        share = sum(hi - lo + 1 for lo, hi, t in runs if t == target) / SLOTS
        assert abs(share - target.weight / sum(weights)) <= 1 / SLOTS
    assert slots([]) == []


def test_slots_interleave() -> None:
    """Every window of 6 consecutive slots with weights 1:2:3 holds each backend in
    its share: numgen's consecutive connections never come in runs."""
    targets = [Target(f"10.0.0.{w}", 80, w) for w in (1, 2, 3)]
    flat = [t for lo, hi, t in slots(targets) for _ in range(lo, hi + 1)]
    for start in range(0, SLOTS - 6, 6):
        window = flat[start : start + 6]
        assert {t: window.count(t) for t in targets} == {t: t.weight for t in targets}


CHECK = Check("tcp", None, "/", 1.0, 0.5, 2, 2)


def service(*targets: Target, index: int = 0, check: Check = CHECK) -> VirtualService:
    return VirtualService(index, "web", ("203.0.113.2",), "tcp", 9000, "roundrobin",
                          tuple(targets), None, check)  # fmt: skip


def test_rendered_table_and_map_update() -> None:
    a, b = Target("10.0.1.21", 80, 1), Target("10.0.1.22", 80, 3)
    part = LbPart((service(a, b),), "inside", 10.0)
    text = render_table(part, {0: [a, b]})
    assert "elements = { 0 : 10.0.1.22 . 80, 1 : 10.0.1.21 . 80, 2-4 : 10.0.1.22 . 80, " in text
    assert (
        "ip daddr { 203.0.113.2 } tcp dport 9000 counter dnat ip to numgen inc mod 1024 "
        "map @vs0" in text
    )
    assert 'iifname "inside" oifname "inside" ct status dnat counter masquerade' in text
    assert "elements" not in render_table(part, {0: []})
    assert map_update(part.services[0], [b]).splitlines() == [
        "flush map ip spectra_lb vs0",
        "add element ip spectra_lb vs0 { 0-1023 : 10.0.1.22 . 80 }",
    ]
    assert map_update(part.services[0], []) == "flush map ip spectra_lb vs0\n"


def test_render_resolves_addresses_and_source_hashing() -> None:
    doc = parse_document(lb_doc(algorithm="source", address="inside", proto="udp",
                                health_check={"port": 81}))  # fmt: skip
    plan = dry_run(doc, ("203.0.113.2",))
    part = plan.parts["load_balancer"]
    assert isinstance(part, LbPart)
    (vs,) = part.services
    assert vs.addresses == ("203.0.113.2",) and vs.check.port == 81
    assert "udp dport 9000 counter dnat ip to jhash ip saddr mod 1024 map @vs0" in render_table(
        part, {0: vs.backends}
    )
    assert LoadBalancerStep.render(parse_document(minimal()), plan_host()) is None


def plan_host() -> Any:
    from control.steps import AnyHost

    return AnyHost(("203.0.113.2",))


def test_hysteresis() -> None:
    check = Check("tcp", None, "/", 1.0, 0.5, rise=2, fall=3)
    h = Health()
    assert observe(h, None, check) and h.healthy  # the first result decides
    assert not observe(h, "refused", check) and not observe(h, "refused", check)
    assert observe(h, "refused", check) and h.healthy is False  # third failure in a row
    assert not observe(h, None, check) and h.healthy is False
    assert observe(h, None, check) and h.healthy is True
    assert h.checks == 6


@pytest.fixture
def http_server() -> Iterator[tuple[str, int]]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ok" else 503)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "127.0.0.1", server.server_address[1]
    server.shutdown()
    server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_probes(http_server: tuple[str, int]) -> None:
    host, port = http_server
    up = Target(host, port)
    assert probe(up, CHECK) is None
    assert probe(up, Check("http", None, "/ok", 1.0, 0.5, 2, 2)) is None
    assert probe(up, Check("http", None, "/bad", 1.0, 0.5, 2, 2)) == "HTTP 503"
    refused = probe(Target(host, free_port()), CHECK)
    assert refused is not None and "ConnectionRefused" in refused
    assert probe(Target("127.0.0.1", 1), Check("tcp", port, "/", 1.0, 0.5, 2, 2)) is None


def test_monitor_takes_a_dead_backend_out_within_two_intervals(
    http_server: tuple[str, int],
) -> None:
    host, port = http_server
    listener = socket.create_server(("127.0.0.1", 0))
    good, dying = Target(host, port), Target("127.0.0.1", listener.getsockname()[1])
    changes: list[int] = []
    monitor = HealthMonitor(changes.append)
    try:
        monitor.configure([service(good, dying, index=3)], 10.0)
        deadline = time.monotonic() + 5
        while monitor.status()["web"]["backends"][dying.key]["state"] != "healthy":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert monitor.healthy(3) == [good, dying]
        listener.close()
        gone = time.monotonic()
        while dying in monitor.healthy(3):
            assert time.monotonic() - gone < 2 * CHECK.interval, "still in the set"
            time.sleep(0.02)
        assert monitor.healthy(3) == [good]
        time.sleep(0.1)
        assert 3 in changes
        status = monitor.status()["web"]["backends"]
        assert status[dying.key]["state"] == "unhealthy" and status[good.key]["state"] == "healthy"
    finally:
        monitor.stop()


@pytest.mark.asyncio
async def test_backend_health_reaches_metrics(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
    sqlite_store: SqliteStore,
    api_settings: ApiSettings,
) -> None:
    backends = {"10.0.1.21:80": {"state": "healthy"}, "10.0.1.22:80": {"state": "unhealthy"}}
    state = {"applied_version": 1, "load_balancer": {"listeners": {"web": {"backends": backends}}}}
    client = await aiohttp_client(
        create_app(sqlite_store, lambda: {"instances": {"gw-a": state}}, api_settings)
    )
    text = await (await client.get("/metrics", headers=auth(READ_TOKEN))).text()
    families, samples = parse(text)
    assert families["spectra_lb_backend_healthy"] == "gauge"
    found = {dict(labels)["backend"]: v for (name, labels), v in samples.items()
             if name == "spectra_lb_backend_healthy"}  # fmt: skip
    assert found == {"10.0.1.21:80": 1.0, "10.0.1.22:80": 0.0}
    assert value(samples, "spectra_lb_backend_healthy", instance="gw-a", listener="web",
                 backend="10.0.1.22:80") == 0.0  # fmt: skip
