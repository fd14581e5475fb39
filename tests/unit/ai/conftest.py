"""Fixtures of the AI-gateway unit tests: fake upstreams and a gateway on 127.0.0.1.

Everything is built through the real factories (``create_app``, the fakes' app
factories) and served by aiohttp test servers on loopback.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from ai.config import AIConfig
from ai.keys import hash_key
from ai.server import GATEWAY, create_app
from tests.fakes.anthropic_fake import create_anthropic_fake
from tests.fakes.bedrock_fake import create_bedrock_fake
from tests.fakes.openai_fake import create_openai_fake, create_vllm_fake
from tests.redisd import RedisServer

SECRET = "unit-test-key-secret"
KEY_A, KEY_B, KEY_REVOKED = "sk-spectra-tenant-a", "sk-spectra-tenant-b", "sk-spectra-revoked"
ENV = {
    "SPECTRA_AI_KEY_SECRET": SECRET,
    "OPENAI_KEY": "sk-upstream-openai-SECRET",
    "ANTHROPIC_KEY": "sk-ant-upstream-SECRET",
    "AWS_AK": "AKIAFAKEFAKEFAKE",
    "AWS_SK": "fake/secret/access/key/SECRET",
}


@dataclass
class Fakes:
    openai: TestServer
    local: TestServer
    anthropic: TestServer
    bedrock: TestServer

    def url(self, name: str) -> str:
        server: TestServer = getattr(self, name)
        return str(server.make_url("")).rstrip("/")

    def app(self, name: str) -> web.Application:
        server: TestServer = getattr(self, name)
        return server.app  # type: ignore[return-value]

    def requests(self, name: str) -> int:
        from tests.fakes.behavior import STATS

        return int(self.app(name)[STATS]["requests"])


@pytest_asyncio.fixture
async def fakes() -> AsyncIterator[Fakes]:
    servers = [
        TestServer(f(), host="127.0.0.1")
        for f in (
            create_openai_fake,
            create_vllm_fake,
            create_anthropic_fake,
            create_bedrock_fake,
        )
    ]
    for server in servers:
        await server.start_server()
    try:
        yield Fakes(*servers)
    finally:
        for server in servers:
            await server.close()


def config_dict(fakes: Fakes, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    local_overflow = overrides.pop(
        "overflow", {"policy": "reject", "ttft_timeout_s": 2.0, "retry_after_s": 7}
    )
    budget_a = overrides.pop("budget_a", {})
    data: dict[str, Any] = {
        "listen_host": "127.0.0.1",
        "listen_port": 0,
        "providers": {
            "openai": {
                "kind": "openai",
                "base_url": fakes.url("openai") + "/v1",
                "api_key": {"env": "OPENAI_KEY"},
            },
            "anthropic": {
                "kind": "anthropic",
                "base_url": fakes.url("anthropic") + "/v1",
                "api_key": {"env": "ANTHROPIC_KEY"},
            },
            "bedrock": {
                "kind": "bedrock",
                "base_url": fakes.url("bedrock"),
                "region": "eu-west-1",
                "aws_access_key_id": {"env": "AWS_AK"},
                "aws_secret_access_key": {"env": "AWS_SK"},
            },
            "vllm": {"kind": "vllm", "base_url": fakes.url("local") + "/v1"},
        },
        "routes": [
            {"pattern": "gpt-*", "provider": "openai", "models": ["gpt-4o-mini"]},
            {"pattern": "text-embedding-*", "provider": "openai"},
            {"pattern": "claude-*", "provider": "anthropic", "models": ["claude-sonnet-4"]},
            {"pattern": "bedrock/*", "provider": "bedrock", "strip_prefix": "bedrock/"},
            {
                "pattern": "local/*",
                "provider": "vllm",
                "strip_prefix": "local/",
                "models": ["local/llama"],
                "overflow": local_overflow,
            },
        ],
        "keys": [
            {
                "id": "key-a",
                "hash": hash_key(SECRET, KEY_A),
                "tenant": "tenant-a",
                "budget": budget_a,
            },
            {"id": "key-b", "hash": hash_key(SECRET, KEY_B), "tenant": "tenant-b"},
            {
                "id": "key-r",
                "hash": hash_key(SECRET, KEY_REVOKED),
                "tenant": "tenant-a",
                "revoked": True,
            },
        ],
        "prices": [{"pattern": "gpt-*", "input_per_mtok": 1.0, "output_per_mtok": 2.0}],
        "exact_cache": {"path": str(tmp_path / "cache.sqlite3")},
        "audit": {"path": str(tmp_path / "audit.jsonl")},
    }
    data.update(overrides)
    return data


GatewayFactory = Callable[..., Awaitable[TestServer]]


@pytest_asyncio.fixture
async def make_gateway(fakes: Fakes, tmp_path: Path) -> AsyncIterator[GatewayFactory]:
    started: list[TestServer] = []

    async def make(semcache: Any = None, **overrides: Any) -> TestServer:
        config = AIConfig.model_validate(config_dict(fakes, tmp_path, **overrides))
        server = TestServer(create_app(config, env=ENV, semantic_cache=semcache), host="127.0.0.1")
        await server.start_server()
        started.append(server)
        return server

    try:
        yield make
    finally:
        for server in started:
            await server.close()


@pytest_asyncio.fixture
async def gateway(make_gateway: GatewayFactory) -> TestServer:
    return await make_gateway()


def client_for(server: TestServer, key: str = KEY_A, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=str(server.make_url("/v1")),
        api_key=key,
        max_retries=0,
        _strict_response_validation=True,
        **kwargs,
    )


@pytest_asyncio.fixture
async def client(gateway: TestServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with client_for(gateway) as c:
        yield c


async def audit_records(server: TestServer) -> list[dict[str, Any]]:
    """The audit log's records once everything handed to the writer is on disk."""
    gw = server.app[GATEWAY]
    await gw.audit.drain()
    path = gw.config.audit.path
    assert path is not None
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real ``redis-server`` of the test's own (the redis state backend's tests)."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
