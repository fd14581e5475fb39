"""Two gateway processes (``python -m ai``) sharing one real ``redis-server`` (the Debian
package, started here on a free loopback port in a temp dir) in front of the fake
upstreams: budgets, rate limits, the exact cache and its singleflight hold across
both, tenants stay apart, and a killed store gives each feature its stance and
recovers when it returns."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ai.keys import hash_key
from tests.e2e.ai.conftest import (
    ROOT,
    SECRET,
    Upstreams,
    _stop,
    free_port,
    http_json,
)
from tests.redisd import RedisServer

KEYS = {  # id: (key, tenant, budget)
    "budget": ("sk-spectra-shared-budget", "ta", {"max_tokens": 3000}),
    "rpm": ("sk-spectra-shared-rpm", "ta", {"requests_per_minute": 10}),
    "a": ("sk-spectra-shared-a", "ta", {}),
    "b": ("sk-spectra-shared-b", "tb", {}),
    "a2": ("sk-spectra-shared-a2", "ta", {}),
    "d": ("sk-spectra-shared-d", "td", {}),
    "closed": ("sk-spectra-shared-closed", "tc", {"max_tokens": 10**9}),
}


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.kill()


def _config(up: Upstreams, tmp: Path, redis_port: int, semantic: bool = False) -> dict[str, Any]:
    return {
        "listen_host": "127.0.0.1",
        "listen_port": free_port(),
        "key_secret": {"file": str(tmp / "key-secret")},
        "providers": {
            "openai": {
                "kind": "openai",
                "base_url": up.urls["openai"] + "/v1",
                "api_key": {"env": "E2E_OPENAI_KEY"},
            }
        },
        "routes": [{"pattern": "gpt-*", "provider": "openai"}],
        "keys": [
            {"id": kid, "hash": hash_key(SECRET, key), "tenant": tenant, "budget": budget}
            for kid, (key, tenant, budget) in KEYS.items()
        ],
        "audit": {"path": str(tmp / "audit.jsonl"), "batch_window_s": 0.0},
        "semantic_cache": {"settings": {}} if semantic else {},
        "state": {
            "backend": "redis",
            "redis": {
                "host": "127.0.0.1",
                "port": redis_port,
                "op_timeout_s": 0.25,
                "backoff_max_s": 0.5,
                "flight_wait_s": 10,
            },
        },
    }


@dataclass
class Gateway:
    url: str
    proc: subprocess.Popen[bytes]
    dir: Path

    def outcomes(self) -> list[str]:
        """The cache outcome of each request in this process's audit log."""
        lines = (self.dir / "audit.jsonl").read_text().splitlines()
        return [json.loads(line)["cache"]["outcome"] for line in lines if '"cache"' in line]


def _start(up: Upstreams, tmp: Path, redis_port: int, semantic: bool) -> Gateway:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "key-secret").write_text(SECRET + "\n")
    config = _config(up, tmp, redis_port, semantic)
    (tmp / "ai.json").write_text(json.dumps(config))
    env = {**os.environ, "E2E_OPENAI_KEY": "sk-e2e-SECRET"}
    with (tmp / "gateway.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ai", "--config", str(tmp / "ai.json"), "--workers", "1"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Gateway(f"http://127.0.0.1:{config['listen_port']}", proc, tmp)


def _wait_up(gw: Gateway, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if gw.proc.poll() is not None:
            raise RuntimeError(f"gateway exited: {log.read_text()}")
        try:
            http_json(gw.url + "/v1/spectra/state")
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("gateway did not answer in 60 s")


def _pair(
    up: Upstreams, redis: RedisServer, tmp: Path, *, semantic: bool
) -> Iterator[tuple[Gateway, Gateway]]:
    pair = [_start(up, tmp / name, redis.port, semantic) for name in ("one", "two")]
    try:
        for gw, name in zip(pair, ("one", "two"), strict=True):
            _wait_up(gw, tmp / name / "gateway.log")
        yield pair[0], pair[1]
    finally:
        for gw in pair:
            _stop(gw.proc)


@pytest.fixture(scope="module")
def gateways(
    upstreams: Upstreams, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Gateway]]:
    """Two processes, exact cache only (the budget and outage tests time Redis calls
    on a loaded host: no embedding beside them)."""
    yield from _pair(upstreams, redis_server, tmp_path_factory.mktemp("gateways"), semantic=False)


@pytest.fixture(scope="module")
def semantic_gateways(
    upstreams: Upstreams, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, Gateway]]:
    """Two more processes with the shipped semantic cache on as well."""
    tmp = tmp_path_factory.mktemp("semantic")
    yield from _pair(upstreams, redis_server, tmp, semantic=True)


@dataclass(frozen=True)
class Result:
    status: int
    body: dict[str, Any]
    seconds: float


async def _one(
    session: aiohttp.ClientSession, url: str, key: str, content: str, model: str, max_tokens: int
) -> Result:
    started = time.monotonic()
    async with session.post(
        url + "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
        },
        headers={"Authorization": f"Bearer {key}"},
    ) as resp:
        body = await resp.json()
        return Result(resp.status, body, time.monotonic() - started)


def burst(
    calls: list[tuple[str, str, str]],
    model: str = "gpt-4o-mini-long40",
    max_tokens: int = 30,
    in_flight: int | None = None,
) -> list[Result]:
    """``(gateway url, key id, content)`` all at once, or ``in_flight`` at a time."""

    async def run() -> list[Result]:
        timeout = aiohttp.ClientTimeout(total=60)
        gate = asyncio.Semaphore(in_flight or len(calls) or 1)

        async def one(url: str, kid: str, content: str) -> Result:
            async with gate:
                return await _one(session, url, KEYS[kid][0], content, model, max_tokens)

        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            return list(await asyncio.gather(*(one(*call) for call in calls)))

    return asyncio.run(run())


def test_budget_holds_across_two_processes(
    gateways: tuple[Gateway, Gateway], redis_server: RedisServer
) -> None:
    one, two = gateways
    results = burst([((one, two)[i % 2].url, "budget", f"budget question {i}") for i in range(200)])
    ok = [r for r in results if r.status == 200]
    refused = [r for r in results if r.status != 200]
    assert ok and refused, "the budget must admit some requests and refuse the rest"
    assert {r.status for r in refused} == {429}
    # spent for good, or held by the reservations of requests in flight (retryable)
    codes = {r.body["error"]["code"] for r in refused}
    assert codes <= {"insufficient_quota", "budget_held_in_flight"}, codes
    assert all("token budget of 3000" in r.body["error"]["message"] for r in refused)
    spent = sum(r.body["usage"]["total_tokens"] for r in ok)
    assert spent <= 3000, f"spent {spent} of a 3000-token budget"
    # every reservation reconciled to what was really used, by both processes
    (budget_key,) = redis_server.cli("--scan", "--pattern", "spectra:ai:*:budget:budget").split()
    assert int(redis_server.cli("HGET", budget_key, "used_tokens")) == spent
    assert int(redis_server.cli("HGET", budget_key, "reserved_tokens")) == 0


def test_rate_limit_holds_across_two_processes(gateways: tuple[Gateway, Gateway]) -> None:
    one, two = gateways
    results = burst([((one, two)[i % 2].url, "rpm", f"rate question {i}") for i in range(30)])
    assert sorted(r.status for r in results) == [200] * 10 + [429] * 20


def test_cache_entry_written_by_one_is_a_hit_on_the_other(
    gateways: tuple[Gateway, Gateway], upstreams: Upstreams
) -> None:
    one, two = gateways
    before = upstreams.requests("openai")
    first = burst([(one.url, "a", "shared cache question")])[0]
    second = burst([(two.url, "a", "shared cache question")])[0]
    assert first.status == second.status == 200
    assert second.body["choices"] == first.body["choices"]
    assert upstreams.requests("openai") - before == 1


def test_identical_requests_on_both_make_one_upstream_call(
    gateways: tuple[Gateway, Gateway], upstreams: Upstreams
) -> None:
    one, two = gateways
    before = upstreams.requests("openai")
    calls = [((one, two)[i % 2].url, "a", "singleflight question") for i in range(20)]
    results = burst(calls, model="gpt-4o-mini-long40-slow500")
    assert [r.status for r in results] == [200] * 20
    assert len({json.dumps(r.body["choices"]) for r in results}) == 1
    assert upstreams.requests("openai") - before == 1


def test_semantic_entry_written_by_one_is_a_hit_on_the_other(
    semantic_gateways: tuple[Gateway, Gateway], upstreams: Upstreams
) -> None:
    one, two = semantic_gateways
    before = upstreams.requests("openai")
    applied = http_json(two.url + "/v1/spectra/state")["semantic"]["events_applied"]
    first = burst([(one.url, "a", "What is the capital city of Portugal?")])[0]
    deadline = time.monotonic() + 10
    while http_json(two.url + "/v1/spectra/state")["semantic"]["events_applied"] == applied:
        assert time.monotonic() < deadline, "the entry did not reach the other process"
        time.sleep(0.05)
    near = "what is the capital city of portugal?"
    again = burst([(two.url, "a", near)])[0]
    other = burst([(two.url, "b", near)])[0]  # tenant tb: never tenant ta's entry
    assert first.status == again.status == other.status == 200
    assert again.body["choices"] == first.body["choices"]
    assert upstreams.requests("openai") - before == 2
    deadline = time.monotonic() + 5
    while two.outcomes()[-2:] != ["semantic_hit", "miss"]:
        assert time.monotonic() < deadline, f"audit of two: {two.outcomes()[-2:]}"
        time.sleep(0.05)


@pytest.mark.timeout(300)
def test_tenants_never_share_entries(
    semantic_gateways: tuple[Gateway, Gateway], upstreams: Upstreams
) -> None:
    """10,000 requests of three tenants (tenant ta through two keys) spread over both
    processes, 200 in flight at a time: exactly one upstream call per (tenant,
    content), and every answer is its own request's (the exact and the semantic cache
    both consulted; max_tokens 31 keeps this test's partitions apart from the rest)."""
    one, two = semantic_gateways
    before = upstreams.requests("openai")
    contents = [f"mixed tenant question number {i}" for i in range(40)]
    kids = ("a", "b", "a2", "d")
    calls = [
        ((one, two)[i % 2].url, kids[(i // 2) % 4], contents[(i // 8) % 40]) for i in range(10_000)
    ]
    started = time.monotonic()
    results = burst(calls, model="gpt-4o-mini", max_tokens=31, in_flight=200)
    took = time.monotonic() - started
    assert [r.status for r in results] == [200] * 10_000
    for (_url, _kid, content), r in zip(calls, results, strict=True):
        assert r.body["choices"][0]["message"]["content"] == f"Echo: {content}"
    # one upstream call per (tenant, content): a cross-tenant hit would make fewer
    assert upstreams.requests("openai") - before == 3 * 40
    print(f"10,000 mixed requests in {took:.1f} s")


def test_store_killed_then_back(
    gateways: tuple[Gateway, Gateway], redis_server: RedisServer, upstreams: Upstreams
) -> None:
    one, two = gateways
    assert burst([(one.url, "closed", "before the outage")])[0].status == 200
    redis_server.kill()
    try:
        calls = [
            ((one, two)[i % 2].url, kid, f"outage {kid} {i}")
            for i in range(20)
            for kid in ("closed", "a")
        ]
        results = burst(calls)
        closed = [r for r, i in zip(results, range(40), strict=True) if i % 2 == 0]
        open_ = [r for r, i in zip(results, range(40), strict=True) if i % 2 == 1]
        assert {r.status for r in closed} == {503}  # budgets fail closed
        assert {r.status for r in open_} == {200}  # no limits: the cache is bypassed
        assert max(r.seconds for r in closed) < 2.0, "a request waited on the dead store"
        for gw in (one, two):
            state = http_json(gw.url + "/v1/spectra/state")
            assert state["available"] is False and state["failures"] > 0
            assert state["on_unavailable"] == {"budgets": "reject", "cache": "bypass"}
    finally:
        redis_server.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = [http_json(gw.url + "/v1/spectra/state") for gw in (one, two)]
        if all(s["available"] for s in states):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the gateways did not reconnect: {states}")
    results = burst([((one, two)[i % 2].url, "closed", f"after the outage {i}") for i in range(4)])
    assert [r.status for r in results] == [200] * 4
