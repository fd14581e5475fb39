"""``python -m ai --workers N``: N processes on one port (SO_REUSEPORT) sharing a real
``redis-server``, supervised; the local backend refuses more than one and says why."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ai.audit import verify
from tests.e2e.ai.conftest import ROOT, SECRET, Upstreams, _stop, http_json
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


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def _launch(tmp: Path, config: dict[str, object], *extra: str) -> subprocess.Popen[bytes]:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "key-secret").write_text(SECRET + "\n")
    (tmp / "ai.json").write_text(json.dumps(config))
    with (tmp / "gateway.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "ai", "--config", str(tmp / "ai.json"), *extra],
            cwd=ROOT,
            env={**os.environ, "E2E_OPENAI_KEY": "sk-e2e-SECRET"},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def _serving(url: str, proc: subprocess.Popen[bytes], workers: int = 1) -> set[int]:
    """The pids answering on the port, once ``workers`` distinct ones have (every
    request on a new connection, which the kernel spreads over the workers)."""
    pids: set[int] = set()
    deadline = time.monotonic() + 90
    while len(pids) < workers:
        assert proc.poll() is None, "the gateway exited"
        assert time.monotonic() < deadline, f"only {pids} answered in 90 s"
        try:
            pids.add(http_json(url + "/v1/spectra/state")["pid"])
        except OSError:
            time.sleep(0.1)
    return pids


def test_two_workers_share_one_port_and_the_budget(
    upstreams: Upstreams, redis_server: RedisServer, tmp_path: Path
) -> None:
    config = _config(upstreams, tmp_path, redis_server.port)
    url = f"http://127.0.0.1:{config['listen_port']}"
    proc = _launch(tmp_path, config, "--workers", "2")
    try:
        assert _serving(url, proc, 2) == _children(proc.pid)
        results = burst([(url, "budget", f"worker question {i}") for i in range(120)])
        ok = [r for r in results if r.status == 200]
        assert ok and len(ok) < 120
        spent = sum(r.body["usage"]["total_tokens"] for r in ok)
        assert spent <= 3000 + max(r.body["usage"]["total_tokens"] for r in ok)
        # both workers answered (one chain each, both verify)
        deadline = time.monotonic() + 10  # the records are written behind the answers
        reports = [verify(tmp_path / f"audit-w{i}.jsonl") for i in range(2)]
        while sum(r.records for r in reports) < 120 and time.monotonic() < deadline:
            time.sleep(0.1)
            reports = [verify(tmp_path / f"audit-w{i}.jsonl") for i in range(2)]
        assert all(r.ok and r.records > 0 for r in reports), reports
        assert sum(r.records for r in reports) == 120
        assert not (tmp_path / "audit.jsonl").exists()
        # a worker that dies is restarted, the port keeps answering meanwhile
        victim = min(_children(proc.pid))
        os.kill(victim, signal.SIGKILL)
        while Path(f"/proc/{victim}").exists():  # reaped: every thread gone, socket closed
            time.sleep(0.01)
        assert burst([(url, "a", "while one worker is down")])[0].status == 200
        restarted = _serving(url, proc, 2)
        assert victim not in restarted and restarted == _children(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    log = (tmp_path / "gateway.log").read_text()
    assert "starting 2 AI gateway workers" in log
    assert "exited with -9; restarting" in log, log


def test_local_backend_stays_one_process_and_says_why(upstreams: Upstreams, tmp_path: Path) -> None:
    config = _config(upstreams, tmp_path, 1)
    config["state"] = {}
    refused = _launch(tmp_path, config, "--workers", "2")
    assert refused.wait(timeout=60) == 2
    assert "--workers 2: state.backend is `local`" in (tmp_path / "gateway.log").read_text()
    single = _launch(tmp_path, config)
    try:
        url = f"http://127.0.0.1:{config['listen_port']}"
        assert _serving(url, single) == {single.pid}
        assert _children(single.pid) == set()
    finally:
        _stop(single)
    assert "one process: state.backend is `local`" in (tmp_path / "gateway.log").read_text()
