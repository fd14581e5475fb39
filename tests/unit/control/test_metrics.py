"""The config API's ``/metrics``, parsed by ``prometheus_client``'s text parser: one TYPE
line per family, counters as counters ending in ``_total``, per-instance labels,
histograms for the config-apply latency and the offload delay."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestClient

from control.api import ApiSettings, create_app
from control.aws.lease import Lease, LeaseSettings
from control.aws.probe import ForwardProbe
from control.store import SqliteStore
from tests.promtext import parse, value
from tests.unit.control.conftest import ADMIN_TOKEN, READ_TOKEN, auth, minimal
from xdp.histogram import Histogram

Client = TestClient[web.Request, web.Application]


def _hist(*seconds: float) -> dict[str, Any]:
    h = Histogram()
    for s in seconds:
        h.observe(s)
    return h.as_dict()


def _instance(drops: int, applies: int) -> dict[str, Any]:
    return {
        "applied_version": 3,
        "converged": True,
        "agent_running": True,
        "applies": applies,
        "apply_seconds": _hist(0.02, 0.3, 2.0),
        "section_errors": {"ai.key_secret": "environment variable X is not set"},
        "xdp_counters": {
            "reasons": {
                "DROP_DENY": {"packets": drops, "bytes": drops * 60},
                "PASS": {"packets": 10, "bytes": 600},
            },
            "deny_rules": {"0": {"packets": drops, "bytes": 0}},
            "flows": 5,
            "flow_capacity": 1024,
        },
        "offload": {
            "offloaded_total": 40,
            "active": 5,
            "resyncs_total": 1,
            "install_delay_seconds": _hist(0.0002, 0.0002, 0.004),
            "nat_ports_top": [{"port": 1}],  # not a number: not exported
        },
        "conntrack": {"count": 42, "max": 262144, "drop": 6, "sizing": {"max": 1}},
        "inspection": {"engine_pid": 1234, "engine_restarts": 2, "rules_loaded": 7},
        "proxy": {"pid": 77, "version": "5.7", "healthy": True, "reconfigures": 3},
        "traffic_logs": {
            "flow_logs": {"reliable": True, "written": 9, "kernel_lost": drops, "queued": 3}
        },
    }


def provider() -> dict[str, Any]:
    return {"instances": {"gw-a": _instance(7, 2), "gw-b": _instance(1, 1)}}


@pytest_asyncio.fixture
async def client(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
    sqlite_store: SqliteStore,
    api_settings: ApiSettings,
) -> Client:
    return await aiohttp_client(create_app(sqlite_store, provider, api_settings))


@pytest.mark.asyncio
async def test_exposition_parses_with_types_and_instance_labels(
    client: Client,
) -> None:
    await client.get("/v1/status", headers=auth(READ_TOKEN))
    resp = await client.get("/metrics", headers=auth(READ_TOKEN))
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    types, samples = parse(await resp.text())

    assert types["spectra_xdp_packets"] == "counter"
    assert value(samples, "spectra_xdp_packets_total", instance="gw-a", reason="drop_deny") == 7
    assert value(samples, "spectra_xdp_packets_total", instance="gw-b", reason="drop_deny") == 1
    assert value(samples, "spectra_xdp_deny_rule_packets_total", instance="gw-a", rule="0") == 7
    assert types["spectra_xdp_flows"] == "gauge"
    assert types["spectra_config_applies"] == "counter"
    assert value(samples, "spectra_config_applies_total", instance="gw-a") == 2
    assert value(samples, "spectra_api_requests_total", method="GET", route="/v1/status",
                 status="200") == 1  # fmt: skip
    assert types["spectra_dataplane_offload_offloaded"] == "counter"
    assert value(samples, "spectra_dataplane_offload_offloaded_total", instance="gw-a") == 40
    assert value(samples, "spectra_dataplane_offload_resyncs_total", instance="gw-a") == 1
    assert types["spectra_dataplane_offload_active"] == "gauge"
    assert types["spectra_dataplane_conntrack_count"] == "gauge"
    assert value(samples, "spectra_dataplane_conntrack_drop_total", instance="gw-b") == 6
    assert types["spectra_dataplane_inspection_engine_restarts"] == "counter"
    assert value(samples, "spectra_dataplane_proxy_healthy", instance="gw-a") == 1
    assert value(samples, "spectra_dataplane_proxy_reconfigures_total", instance="gw-a") == 3
    assert value(samples, "spectra_config_section_errors", instance="gw-a",
                 field="ai.key_secret") == 1  # fmt: skip
    assert value(samples, "spectra_dataplane_flow_logs_written_total", instance="gw-a") == 9
    assert value(samples, "spectra_dataplane_flow_logs_kernel_lost_total", instance="gw-b") == 1
    assert types["spectra_dataplane_flow_logs_queued"] == "gauge"
    # a process id is not a metric; nothing outside the typed tables is exported
    assert not any("pid" in name for name in types)


@pytest.mark.asyncio
async def test_latency_histograms(
    client: Client,
) -> None:
    types, samples = parse(await (await client.get("/metrics", headers=auth(READ_TOKEN))).text())
    assert types["spectra_config_apply_seconds"] == "histogram"
    assert types["spectra_offload_delay_seconds"] == "histogram"
    apply = "spectra_config_apply_seconds"
    assert value(samples, f"{apply}_count", instance="gw-a") == 3
    assert value(samples, f"{apply}_sum", instance="gw-a") == pytest.approx(2.32)
    assert value(samples, f"{apply}_bucket", instance="gw-a", le="0.05") == 1
    assert value(samples, f"{apply}_bucket", instance="gw-a", le="0.5") == 2
    assert value(samples, f"{apply}_bucket", instance="gw-a", le="+Inf") == 3
    delay = "spectra_offload_delay_seconds"
    assert value(samples, f"{delay}_bucket", instance="gw-b", le="0.0005") == 2
    assert value(samples, f"{delay}_bucket", instance="gw-b", le="0.005") == 3


def test_histogram_buckets_are_cumulative_and_bounded() -> None:
    h = Histogram(bounds=(0.1, 1.0))
    for s in (0.05, 0.1, 0.5, 3.0):
        h.observe(s)
    assert h.as_dict() == {
        "buckets": [[0.1, 2], [1.0, 3], ["+Inf", 4]],
        "sum": pytest.approx(3.65),
        "count": 4,
    }


@pytest.mark.asyncio
async def test_metrics_disabled_by_the_document(
    client: Client,
) -> None:
    assert (await client.get("/metrics", headers=auth(READ_TOKEN))).status == 200
    headers = {**auth(ADMIN_TOKEN), "If-Match": '"0"'}
    document = {**minimal(), "metrics": {"enabled": False}}
    put = await client.put("/v1/config", json={"document": document}, headers=headers)
    assert put.status == 200
    resp = await client.get("/metrics", headers=auth(READ_TOKEN))
    assert resp.status == 404
    assert "metrics.enabled" in (await resp.json())["error"]["message"]


def _aws(takeovers: int, ok: bool) -> dict[str, Any]:
    """An agent's ``aws`` status as ``Ha.as_dict`` writes it, the lease part from a
    real :class:`Lease` (its counter names are what is exported)."""
    lease = Lease(None, LeaseSettings("t", "eu-west-1a", "i-1"), lambda: True)
    lease.counters |= {"takeovers": takeovers, "deferrals": 2}
    status = lease.status() | {"state": "leader", "token": 9}
    return {
        "role": "leader",
        "availability_zone": "eu-west-1a",
        "lease": status,
        "takeover": {"token": 9, "steps": {}, "seconds": 1.25, "ok": ok, "error": None},
        "cross_az_fallback": {"enabled": True, "counters": {"adopted": 1, "returned": 0}},
        "forward_probe": _probe_status(),
    }


def _probe_status() -> dict[str, Any]:
    """A real :class:`ForwardProbe`'s status after one failed and one passed round."""
    probe = ForwardProbe(["127.0.0.1:1"], timeout_s=0.2)
    probe.counting = lambda: 9
    probe._round(9)  # nothing listens on port 1
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        probe.targets = [("127.0.0.1", srv.getsockname()[1])]
        probe._round(9)
    return probe.status()


@pytest.mark.asyncio
async def test_lease_and_takeover_families(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
    sqlite_store: SqliteStore,
    api_settings: ApiSettings,
) -> None:
    """Each change of leadership is a metric: the lease's counters, who leads, the last
    takeover's outcome; an instance without an AWS side has no samples."""
    status = provider()
    status["instances"]["gw-a"]["aws"] = _aws(takeovers=3, ok=False)
    client = await aiohttp_client(create_app(sqlite_store, lambda: status, api_settings))
    types, samples = parse(await (await client.get("/metrics", headers=auth(READ_TOKEN))).text())
    at = {"instance": "gw-a", "az": "eu-west-1a"}
    assert types["spectra_lease_takeovers"] == "counter"
    assert value(samples, "spectra_lease_takeovers_total", **at) == 3
    assert value(samples, "spectra_lease_deferrals_total", **at) == 2
    assert value(samples, "spectra_lease_lost_total", **at) == 0
    assert types["spectra_lease_leader"] == "gauge"
    assert value(samples, "spectra_lease_leader", **at) == 1
    assert value(samples, "spectra_lease_token", **at) == 9
    assert value(samples, "spectra_takeover_ok", **at) == 0
    assert value(samples, "spectra_takeover_seconds", **at) == 1.25
    assert value(samples, "spectra_cross_az_fallback_adopted_total", **at) == 1
    assert types["spectra_forward_probe_rounds"] == "counter"
    assert value(samples, "spectra_forward_probe_rounds_total", **at) == 2
    assert value(samples, "spectra_forward_probe_failures_total", **at) == 1
    assert value(samples, "spectra_forward_probe_ok", **at) == 1
    assert not any(dict(labels).get("instance") == "gw-b" for name, labels in samples
                   if name.startswith(("spectra_lease", "spectra_takeover")))  # fmt: skip
