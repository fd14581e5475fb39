"""Shared pieces of the dashboard's browser tests: Debian's Chromium through Playwright
(never `playwright install`), a config API served on loopback, login, screenshots into
docs/dashboard/, and plain API calls (urllib) to check what the browser did."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from control.api import ApiSettings, create_app
from control.api.state import FlowFiles, StatusProvider
from control.servers import HttpServer, ServerThread
from control.store import SqliteStore

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "dashboard"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_api(
    db: Path, status: StatusProvider, settings: ApiSettings, flow_files: FlowFiles | None = None
) -> Iterator[str]:
    """The config API over the SQLite store at ``db`` on a free loopback port."""
    port = free_port()
    server = HttpServer(
        "config API",
        lambda: create_app(SqliteStore(db), status, settings, None, flow_files),
        "127.0.0.1",
        port,
    )
    servers = ServerThread([server])
    servers.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        servers.stop()


@contextmanager
def browser(*extra_args: str) -> Iterator[Browser]:
    """Debian's Chromium, headless; ``extra_args`` are more command-line flags."""
    if not CHROMIUM.exists():
        pytest.fail("the e2e tier needs Debian's chromium (run `make deps`)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=[*ARGS, *extra_args])
        try:
            yield b
        finally:
            b.close()


def new_page(b: Browser) -> Page:
    page = b.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(15_000)
    return page


def login(page: Page, url: str, token: str) -> None:
    page.goto(url + "/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_selector("#who")


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


@dataclass(frozen=True, slots=True)
class Api:
    """Plain HTTP calls to the same API, to check what the browser did."""

    url: str

    def call(
        self,
        method: str,
        path: str,
        token: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())


def poll(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {seconds} s waiting for {what}")
