"""The gateway as a real process (``python -m ai --config FILE``) on loopback, in front
of the fake upstreams as another process (``python -m tests.fakes``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ai.keys import hash_key

ROOT = Path(__file__).resolve().parents[3]
SECRET = "e2e-key-secret"
KEY_A, KEY_B = "sk-spectra-e2e-a", "sk-spectra-e2e-b"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_json(url: str, data: bytes | None = None) -> Any:
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=5) as resp:
        return json.loads(resp.read())


@dataclass
class Upstreams:
    urls: dict[str, str]

    def requests(self, name: str) -> int:
        return int(http_json(self.urls[name] + "/_fake/stats")["requests"])

    def reset(self) -> None:
        for url in self.urls.values():
            http_json(url + "/_fake/reset", b"")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture(scope="module")
def upstreams() -> Iterator[Upstreams]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        yield Upstreams(json.loads(proc.stdout.readline()))
    finally:
        _stop(proc)


@dataclass
class GatewayProcess:
    url: str
    audit: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> None:
        _stop(self.proc)


def gateway_config(up: Upstreams, tmp: Path, policy: dict[str, Any]) -> dict[str, Any]:
    return {
        "listen_host": "127.0.0.1",
        "listen_port": free_port(),
        "key_secret": {"file": str(tmp / "key-secret")},
        "providers": {
            "openai": {
                "kind": "openai",
                "base_url": up.urls["openai"] + "/v1",
                "api_key": {"env": "E2E_OPENAI_KEY"},
            },
            "anthropic": {
                "kind": "anthropic",
                "base_url": up.urls["anthropic"] + "/v1",
                "api_key": {"env": "E2E_ANTHROPIC_KEY"},
            },
            "bedrock": {
                "kind": "bedrock",
                "base_url": up.urls["bedrock"],
                "region": "eu-west-1",
                "aws_access_key_id": {"env": "E2E_AK"},
                "aws_secret_access_key": {"env": "E2E_SK"},
            },
            "vllm": {"kind": "vllm", "base_url": up.urls["local"] + "/v1"},
        },
        "routes": [
            {"pattern": "gpt-*", "provider": "openai", "models": ["gpt-4o-mini"]},
            {"pattern": "claude-*", "provider": "anthropic"},
            {"pattern": "bedrock/*", "provider": "bedrock", "strip_prefix": "bedrock/"},
            {
                "pattern": "local/*",
                "provider": "vllm",
                "strip_prefix": "local/",
                "overflow": policy,
            },
        ],
        "keys": [
            {
                "id": "a",
                "hash": hash_key(SECRET, KEY_A),
                "tenant": "ta",
                "budget": {"max_tokens": 500},
            },
            {"id": "b", "hash": hash_key(SECRET, KEY_B), "tenant": "tb"},
        ],
        "exact_cache": {"path": str(tmp / "cache.sqlite3")},
        "audit": {"path": str(tmp / "audit.jsonl")},
    }


def start_gateway(up: Upstreams, tmp: Path, policy: dict[str, Any]) -> GatewayProcess:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "key-secret").write_text(SECRET + "\n")
    return launch_gateway(tmp, gateway_config(up, tmp, policy))


def launch_gateway(tmp: Path, config: dict[str, Any]) -> GatewayProcess:
    """``python -m ai --config`` with ``config`` (an ``ai`` section), listening."""
    (tmp / "ai.json").write_text(json.dumps(config))
    env = {
        **os.environ,
        "E2E_OPENAI_KEY": "sk-e2e-SECRET",
        "E2E_ANTHROPIC_KEY": "ant-SECRET",
        "E2E_AK": "AKIAE2E",
        "E2E_SK": "e2e-SECRET",
    }
    with (tmp / "gateway.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ai", "--config", str(tmp / "ai.json")],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{config['listen_port']}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited: {(tmp / 'gateway.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", config["listen_port"]), timeout=0.2):
                return GatewayProcess(url, tmp / "audit.jsonl", proc)
        except OSError:
            time.sleep(0.1)
    _stop(proc)
    raise RuntimeError("gateway did not start listening in 30 s")


@pytest.fixture
def reject_gateway(upstreams: Upstreams, tmp_path: Path) -> Iterator[GatewayProcess]:
    upstreams.reset()
    gw = start_gateway(
        upstreams,
        tmp_path / "reject",
        {"policy": "reject", "ttft_timeout_s": 0.5, "retry_after_s": 3},
    )
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def spill_gateway(upstreams: Upstreams, tmp_path: Path) -> Iterator[GatewayProcess]:
    upstreams.reset()
    gw = start_gateway(
        upstreams,
        tmp_path / "spill",
        {"policy": "spill", "spill_model": "gpt-4o-mini", "ttft_timeout_s": 0.5},
    )
    try:
        yield gw
    finally:
        gw.stop()
