"""The appliance agent's AI gateway with ``ai.state.backend: redis``: worker processes
(``python -m control.aiworker``, one per core, SO_REUSEPORT) started from the config
store by the agent's ``_ai_workers``, not the in-process server; they share a real
``redis-server`` (the budget holds across them), write one audit chain each, and stop
when the agent stops them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai.audit import verify
from control.cli import _ai_workers, _servers
from control.config import parse_document
from control.store import SqliteStore
from tests.e2e.ai.conftest import SECRET, Upstreams, http_json
from tests.e2e.ai.test_shared_state import _config, burst
from tests.redisd import RedisServer


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.dir.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.mark.timeout(180)
def test_the_agent_runs_the_ai_gateway_as_workers_with_redis(
    upstreams: Upstreams,
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("E2E_OPENAI_KEY", "sk-e2e-SECRET")  # inherited by the workers
    (tmp_path / "key-secret").write_text(SECRET + "\n")
    ai = _config(upstreams, tmp_path, redis_server.port)
    doc = parse_document({"interfaces": {"inside": "inside", "outside": "outside"}, "ai": ai})
    store_url = f"local:{tmp_path / 'config.db'}"
    store = SqliteStore(tmp_path / "config.db")
    store.put(doc, 0, "test")
    # not served in the agent's process
    names = [s.name for s in _servers(store_url, store, None, lambda: None)]
    assert names == ["config API"]
    supervisor = _ai_workers(store, store_url, "http://127.0.0.1:9")
    assert supervisor is not None
    url = f"http://127.0.0.1:{ai['listen_port']}"
    count = os.cpu_count() or 1
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 120
        while len(pids) < count:
            assert time.monotonic() < deadline, f"only {pids} answered"
            try:
                pids.add(http_json(url + "/v1/spectra/state")["pid"])
            except OSError:
                time.sleep(0.2)
        assert pids == set(supervisor.pids)
        results = burst([(url, "budget", f"agent worker question {i}") for i in range(80)])
        ok = [r for r in results if r.status == 200]
        assert ok and {r.status for r in results} <= {200, 429}
        spent = sum(r.body["usage"]["total_tokens"] for r in ok)
        assert spent <= 3000 + max(r.body["usage"]["total_tokens"] for r in ok)
        deadline = time.monotonic() + 10  # written behind the answers
        while time.monotonic() < deadline:
            reports = [verify(tmp_path / f"audit-w{i}.jsonl") for i in range(count)]
            if sum(r.records for r in reports if r.ok) == 80:
                break
            time.sleep(0.1)
        assert all(r.ok for r in reports) and sum(r.records for r in reports) == 80, reports
    finally:
        supervisor.stop(timeout_s=30)
    assert supervisor.pids == []
    store.close()


def test_the_local_backend_stays_in_the_agent(upstreams: Upstreams, tmp_path: Path) -> None:
    ai = _config(upstreams, tmp_path, 1)
    ai["state"] = {}
    doc = parse_document({"interfaces": {"inside": "inside", "outside": "outside"}, "ai": ai})
    store = SqliteStore(tmp_path / "config.db")
    store.put(doc, 0, "test")
    store_url = f"local:{tmp_path / 'config.db'}"
    assert _ai_workers(store, store_url, "http://127.0.0.1:9") is None
    names = [s.name for s in _servers(store_url, store, None, lambda: None)]
    assert names == ["config API", "AI gateway"]
    store.close()
