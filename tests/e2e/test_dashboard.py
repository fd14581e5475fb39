"""The dashboard in a real browser (Debian's Chromium driven by Playwright): every action
is a config API call, and each one shows up in the store."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import sync_playwright

from control.api import ApiSettings, create_app, token_entry
from control.config import parse_document
from control.config.operations import ApiToken
from control.servers import HttpServer, ServerThread
from control.store import SqliteStore

CHROMIUM = Path("/usr/bin/chromium")
DOC = {"interfaces": {"inside": "inside", "outside": "outside"}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, str, SqliteStore]]:
    token, entry = token_entry("browser", "admin")
    store = SqliteStore(tmp_path / "config.db")
    store.put(parse_document(DOC), 0, "bootstrap")
    status = {
        "instances": {
            "gw-1": {
                "applied_version": 1,
                "converged": True,
                "data_plane": "xdp",
                "xdp_modes": {"inside": "native"},
            }
        }
    }
    settings = ApiSettings(extra_tokens=(ApiToken.model_validate(entry),))
    port = _free_port()
    app = HttpServer(
        "config API",
        lambda: create_app(SqliteStore(tmp_path / "config.db"), lambda: status, settings),
        "127.0.0.1",
        port,
    )
    servers = ServerThread([app])
    servers.start()
    try:
        yield f"http://127.0.0.1:{port}", token, store
    finally:
        servers.stop()
        store.close()


def test_dashboard_reads_validates_applies_and_rolls_back(served: Any) -> None:
    if not CHROMIUM.exists():
        pytest.fail("the e2e tier needs Debian's chromium (run `make deps`)")
    url, token, store = served
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.fill("#token", token)
            page.click("#connect")
            page.wait_for_selector("#instances tbody tr")
            assert "gw-1" in page.inner_text("#instances")
            page.wait_for_function(
                "document.getElementById('docversion').textContent === '(version 1)'"
            )

            edited = {**DOC, "rules": {"entries": [{"action": "deny", "dst": "198.51.100.7/32"}]}}
            page.fill("#doc", json.dumps(edited))
            page.click("#validate")
            page.wait_for_function("document.getElementById('message').textContent === 'valid'")
            assert "198.51.100.7" in page.inner_text("#result")  # the rendered ruleset

            page.click("#apply")
            page.wait_for_function(
                "document.getElementById('message').textContent.startsWith('applied as version 2')"
            )
            assert store.head() == 2
            assert str(store.get(2).rules.entries[0].dst) == "198.51.100.7/32"
            # the page reloads the document after applying: edit only once it has
            page.wait_for_function(
                "document.getElementById('docversion').textContent === '(version 2)'"
            )

            page.fill("#doc", '{"interfaces": {"inside": "inside", "outside": "inside"}}')
            page.click("#apply")
            page.wait_for_function("document.getElementById('message').className === 'bad'")
            assert "interfaces.outside" in page.inner_text("#message")
            assert store.head() == 2  # nothing stored

            page.click("#versions button[data-version='1']")
            page.wait_for_function(
                "document.getElementById('message').textContent.startsWith('rolled back to 1')"
            )
            assert store.head() == 3 and store.get(3).rules.entries == []
        finally:
            browser.close()
