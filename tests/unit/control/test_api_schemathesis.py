"""Schemathesis against the served /openapi.json: no server errors, responses as documented.

The app runs on a loopback port in a thread with its own event loop (aiohttp is not
ASGI), over a fresh SQLite store seeded with one document.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from control.api import ApiSettings, create_app
from control.config import parse_document
from control.store import SqliteStore
from tests.unit.control.conftest import ADMIN_TOKEN, auth, minimal

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class ServedApp:
    """The config API served on 127.0.0.1 from a background thread."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, access_log=None)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return f"http://127.0.0.1:{self.port}"

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def __exit__(self, *_: Any) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from control.api import hash_token
    from control.config.operations import ApiToken

    store = SqliteStore(Path(tmp_path_factory.mktemp("st")) / "config.db")
    store.put(parse_document(minimal()), 0, "seed")
    settings_ = ApiSettings(
        extra_tokens=(ApiToken(name="fuzz", role="admin", hash=hash_token(ADMIN_TOKEN)),),
        max_body_bytes=256 * 1024,
    )
    with ServedApp(create_app(store, lambda: {"instances": {}}, settings_)) as url:
        yield url
    store.close()


def _base_on_head(served: str, case: Any) -> None:
    """Mostly write against the current version, so writes get past the 409 check."""
    etag = requests.get(f"{served}/v1/config", headers=auth(ADMIN_TOKEN), timeout=10).headers[
        "ETag"
    ]
    if isinstance(case.headers, dict) and "If-Match" in case.headers:
        case.headers["If-Match"] = etag
    if isinstance(case.body, dict) and isinstance(case.body.get("version"), int):
        case.body["version"] = int(etag.strip('"'))
    elif case.method == "PATCH" or (case.headers or {}).get("If-Match") is None:
        case.headers = {**(case.headers or {}), "If-Match": etag}


@pytest.mark.timeout(110)
def test_api_conforms_to_its_openapi(served: str) -> None:
    """Every operation, fuzzed from the schema the server serves (no pytest plugin:
    schemathesis's parametrize does not run under pytest 9)."""
    api = schemathesis.openapi.from_url(f"{served}/openapi.json")
    failures: list[str] = []
    operations = [result.ok() for result in api.get_all_operations()]
    # + POST /v1/aws/changesets, GET /v1/alerts, GET /v1/status/history, GET /v1/whoami,
    # GET /v1/flows, GET /v1/ai/usage, GET /v1/ai/usage/history, POST /v1/ai/keys,
    # POST /v1/ai/keys/{id}/revoke
    assert len(operations) == 19
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            derandomize=True,  # the same examples every run: CI must not flake
        )
        def fuzz(case: Any) -> None:
            if case.method in ("PUT", "PATCH"):
                _base_on_head(served, case)
            case.call_and_validate(headers=auth(ADMIN_TOKEN), checks=CHECKS)

        try:
            fuzz()
        except Exception as exc:  # collect every operation's failure, then fail once
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
    metrics = requests.get(f"{served}/metrics", headers=auth(ADMIN_TOKEN), timeout=10).text
    assert 'status="500"' not in metrics
    # the fuzzer got past validation (documents were generated, not just junk): writes
    # through PUT, PATCH or rollback committed new versions
    committed = re.findall(
        r'method="(?:PUT|PATCH|POST)",route="/v1/config(?:/rollback)?",status="200"', metrics
    )
    assert committed, metrics
