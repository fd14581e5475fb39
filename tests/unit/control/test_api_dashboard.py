"""What the dashboard needs from the config API: who the caller is, the bounded status
history its charts draw, and the built single-page app with its assets."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from control.api import ApiSettings, create_app, openapi_document
from control.api.history import StatusHistory, reduce_instance
from control.store import SqliteStore
from tests.unit.control.conftest import ADMIN_TOKEN, READ_TOKEN, auth

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]


def _state(packets: int, role: str | None = None) -> dict[str, Any]:
    return {
        "applied_version": 3,
        "converged": True,
        "aws": {"role": role} if role else {},
        "xdp_counters": {
            "reasons": {
                "REDIRECT": {"packets": packets, "bytes": packets * 100},
                "PASS_NO_FLOW": {"packets": 10, "bytes": 1000},
                "DROP_DENY": {"packets": 4, "bytes": 240},
            }
        },
        "conntrack": {"count": 50, "max": 1000, "insert_failed": 0},
        "offload": {"nat_ports_busiest": 7},
        "links": {"inside": {"rx_packets": packets, "rx_bytes": 9, "tx_packets": 1,
                             "tx_bytes": 2, "multicast": 5}},
    }  # fmt: skip


def test_reduce_instance_sums_reasons_and_splits_fast_path_and_drops() -> None:
    point = reduce_instance(_state(90, "leader"))
    assert point == {
        "packets": 104,
        "bytes": 10240,
        "fast_packets": 90,
        "fast_bytes": 9000,
        "drops": {"drop_deny": 4},
        "links": {"inside": {"rx_packets": 90, "rx_bytes": 9, "tx_packets": 1, "tx_bytes": 2}},
        "conntrack_count": 50,
        "conntrack_max": 1000,
        "conntrack_insert_failed": 0,
        "nat_ports_busiest": 7,
        "applied_version": 3,
        "converged": True,
        "role": "leader",
    }
    # an instance whose maps are unreadable reports zeros and unknowns, not an error
    assert reduce_instance({"xdp_counters": {"error": "cannot read"}})["packets"] == 0
    assert reduce_instance({})["conntrack_count"] is None


def test_link_counters_only_from_the_agents_own_namespace() -> None:
    from control.agent import netns_inode
    from control.status import links

    here = {"interfaces": {"inside": "lo", "outside": "no-such-if0"}, "netns": netns_inode()}
    found = links(here)
    assert set(found["inside"]) == {"rx_packets", "rx_bytes", "tx_packets", "tx_bytes"}
    assert found["outside"] == {}
    # an agent in another namespace: its interface names mean nothing here
    assert links({**here, "netns": netns_inode() + 1}) == {}
    assert links({"interfaces": {"inside": "lo"}}) == {}


def test_history_is_bounded_and_reads_newer_than_since() -> None:
    history = StatusHistory(capacity=3)
    for i in range(5):
        history.sample({"instances": {"gw": _state(i)}}, 100.0 + i)
    assert [s["t"] for s in history.since(0)] == [102.0, 103.0, 104.0]
    assert [s["t"] for s in history.since(103.0)] == [104.0]
    assert history.since(104.0) == []


@pytest.mark.asyncio
async def test_whoami_names_the_role(
    aiohttp_client: MakeClient, sqlite_store: SqliteStore, api_settings: ApiSettings
) -> None:
    client = await aiohttp_client(create_app(sqlite_store, lambda: {}, api_settings))
    admin = await (await client.get("/v1/whoami", headers=auth(ADMIN_TOKEN))).json()
    viewer = await (await client.get("/v1/whoami", headers=auth(READ_TOKEN))).json()
    assert admin == {"name": "bootstrap", "role": "admin"}
    assert viewer == {"name": "viewer", "role": "read"}
    assert (await client.get("/v1/whoami")).status == 401


@pytest.mark.asyncio
async def test_status_history_samples_the_provider(
    aiohttp_client: MakeClient, sqlite_store: SqliteStore, api_settings: ApiSettings
) -> None:
    calls = 0

    def provider() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        return {"instances": {"gw-a": _state(calls * 1000)}}

    settings = dataclasses.replace(api_settings, history_seconds=0.02, history_samples=5)
    client = await aiohttp_client(create_app(sqlite_store, provider, settings))
    samples: list[dict[str, Any]] = []
    for _ in range(200):  # up to 4 s for 5 samples taken 20 ms apart
        body = await (await client.get("/v1/status/history", headers=auth(READ_TOKEN))).json()
        samples = body["samples"]
        if len(samples) == 5 and calls > 6:
            break
        await asyncio.sleep(0.02)
    assert len(samples) == 5  # bounded: older samples were dropped
    assert body["window_seconds"] == pytest.approx(0.1)
    times = [s["t"] for s in samples]
    assert times == sorted(times)
    packets = [s["instances"]["gw-a"]["fast_packets"] for s in samples]
    assert packets == sorted(packets) and packets[0] > 1000  # the first samples are gone
    newer = await client.get(
        "/v1/status/history", params={"since": str(times[-2])}, headers=auth(READ_TOKEN)
    )
    newer_times = [s["t"] for s in (await newer.json())["samples"]]
    # the sampler keeps going: what came after times[-1] may be there too
    assert newer_times[0] == times[-1] and min(newer_times) > times[-2]


@pytest.mark.asyncio
async def test_status_history_rejects_a_bad_since(
    aiohttp_client: MakeClient, sqlite_store: SqliteStore, api_settings: ApiSettings
) -> None:
    client = await aiohttp_client(create_app(sqlite_store, lambda: {}, api_settings))
    for bad in ("yesterday", "nan"):
        resp = await client.get("/v1/status/history", params={"since": bad}, headers=auth())
        assert resp.status == 400
        assert "since" in (await resp.json())["error"]["message"]


@pytest.mark.asyncio
async def test_dashboard_and_assets_are_public_and_confined(
    aiohttp_client: MakeClient,
    sqlite_store: SqliteStore,
    api_settings: ApiSettings,
    tmp_path: Path,
) -> None:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>x</title>")
    (dist / "assets" / "index-abc.js").write_text("console.log(1)")
    (tmp_path / "secret.txt").write_text("no")
    settings = dataclasses.replace(api_settings, dashboard_dir=dist)
    client = await aiohttp_client(create_app(sqlite_store, lambda: {}, settings))
    page = await client.get("/")
    assert page.status == 200 and "default-src 'self'" in page.headers["Content-Security-Policy"]
    js = await client.get("/assets/index-abc.js")
    assert js.status == 200 and await js.text() == "console.log(1)"
    assert "immutable" in js.headers["Cache-Control"]
    for bad in ("/assets/..%2Fsecret.txt", "/assets/..%2F..%2Fsecret.txt", "/assets/none.js"):
        assert (await client.get(bad)).status == 404


@pytest.mark.asyncio
async def test_unbuilt_dashboard_says_how_to_build_it(
    aiohttp_client: MakeClient,
    sqlite_store: SqliteStore,
    api_settings: ApiSettings,
    tmp_path: Path,
) -> None:
    settings = dataclasses.replace(api_settings, dashboard_dir=tmp_path / "missing")
    client = await aiohttp_client(create_app(sqlite_store, lambda: {}, settings))
    resp = await client.get("/dashboard")
    assert resp.status == 503 and "make deps" in await resp.text()


def test_openapi_documents_the_dashboard_endpoints() -> None:
    paths = openapi_document()["paths"]
    assert "/v1/whoami" in paths and "/v1/status/history" in paths
    schemas = openapi_document()["components"]["schemas"]
    assert schemas["Principal"]["properties"]["role"]["enum"] == ["read", "admin"]


def _flow(src: str, dst: str, nbytes: int, nat: str = "-") -> dict[str, Any]:
    return {"srcaddr": src, "dstaddr": dst, "bytes": nbytes, "packets": nbytes // 100,
            "nat-srcaddr": nat, "nat-dstaddr": "-", "protocol": 6}  # fmt: skip


def _write_log(path: Path, records: list[dict[str, Any]]) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.mark.asyncio
async def test_flows_rank_talkers_and_search_by_address(
    aiohttp_client: MakeClient,
    sqlite_store: SqliteStore,
    api_settings: ApiSettings,
    tmp_path: Path,
) -> None:
    log = tmp_path / "gw-a" / "flow.jsonl"
    _write_log(
        log,
        [
            _flow("10.0.1.5", "198.51.100.7", 5000, nat="203.0.113.9"),
            _flow("10.0.1.6", "198.51.100.7", 100),
            _flow("10.0.1.5", "198.51.100.8", 700),
        ],
    )
    with log.open("a") as f:
        f.write("not json\n")
    client = await aiohttp_client(
        create_app(sqlite_store, lambda: {}, api_settings, flow_files=lambda: {"gw-a": log})
    )
    body = await (await client.get("/v1/flows", headers=auth(READ_TOKEN))).json()
    gw = body["instances"]["gw-a"]
    assert gw["records"] == 3 and gw["truncated"] is False
    assert gw["top_sources"] == [
        {"address": "10.0.1.5", "bytes": 5700, "packets": 57, "flows": 2},
        {"address": "10.0.1.6", "bytes": 100, "packets": 1, "flows": 1},
    ]
    assert [t["address"] for t in gw["top_destinations"]] == ["198.51.100.7", "198.51.100.8"]
    # the search matches the translated source too; newest first
    found = await client.get(
        "/v1/flows", params={"address": "203.0.113.9"}, headers=auth(READ_TOKEN)
    )
    gw = (await found.json())["instances"]["gw-a"]
    assert gw["matches"] == 1 and gw["newest"][0]["srcaddr"] == "10.0.1.5"
    bad = await client.get("/v1/flows", params={"address": "10.0.1"}, headers=auth(READ_TOKEN))
    assert bad.status == 400 and "address" in (await bad.json())["error"]["message"]
    assert (await client.get("/v1/flows", params={"limit": "0"}, headers=auth())).status == 400


@pytest.mark.asyncio
async def test_flows_read_only_the_tail_of_a_large_log(
    aiohttp_client: MakeClient,
    sqlite_store: SqliteStore,
    api_settings: ApiSettings,
    tmp_path: Path,
) -> None:
    log = tmp_path / "gw-a" / "flow.jsonl"
    _write_log(
        log,
        [_flow("10.0.0.1", "198.51.100.1", 1)] * 1000 + [_flow("10.0.0.2", "198.51.100.2", 9)] * 10,
    )
    settings = dataclasses.replace(api_settings, flow_read_bytes=2000)
    client = await aiohttp_client(
        create_app(
            sqlite_store,
            lambda: {},
            settings,
            flow_files=lambda: {"gw-a": log, "gw-b": tmp_path / "none"},
        )
    )
    body = await (await client.get("/v1/flows", headers=auth(READ_TOKEN))).json()
    gw = body["instances"]["gw-a"]
    assert gw["bytes_read"] == 2000 and gw["truncated"] is True
    assert 0 < gw["records"] < 2000 // 100  # whole records only, from the end
    assert gw["top_sources"][0]["address"] == "10.0.0.2"
    assert body["instances"]["gw-b"]["records"] == 0  # no log yet: empty, not an error


def test_flows_per_minute_count_flows_and_bytes_by_the_minute_they_ended() -> None:
    from control.api.flows import per_minute

    records = [
        {"end": 1_765_080_061, "bytes": 100, "packets": 2},
        {"end": 1_765_080_119, "bytes": 50, "packets": 1},  # the same minute
        {"end": 1_765_080_240, "bytes": 7, "packets": 1},  # two minutes on
        {"bytes": 9, "packets": 1},  # no end: left out
        {"end": "x", "bytes": 9},
    ]
    assert per_minute(records) == [
        {"t": 1_765_080_060, "flows": 2, "bytes": 150, "packets": 3},
        {"t": 1_765_080_240, "flows": 1, "bytes": 7, "packets": 1},
    ]
