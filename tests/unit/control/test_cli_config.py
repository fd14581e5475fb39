"""`spectra config` against a real config API on loopback."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from control.api import ApiSettings, create_app, token_entry
from control.cli import main
from control.config import parse_document
from control.config.operations import ApiToken
from control.servers import HttpServer, ServerThread
from control.store import SqliteStore

DOC = {"interfaces": {"inside": "inside", "outside": "outside"}}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[dict[str, str], SqliteStore]]:
    token, entry = token_entry("cli", "admin")
    store = SqliteStore(tmp_path / "c.db")
    store.put(parse_document(DOC), 0, "bootstrap")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = ApiSettings(extra_tokens=(ApiToken.model_validate(entry),))
    servers = ServerThread(
        [
            HttpServer(
                "api",
                lambda: create_app(SqliteStore(tmp_path / "c.db"), dict, settings),
                "127.0.0.1",
                port,
            )
        ]
    )
    servers.start()
    try:
        yield {"SPECTRA_API": f"http://127.0.0.1:{port}", "SPECTRA_TOKEN": token}, store
    finally:
        servers.stop()
        store.close()


def test_get_validate_put_versions_rollback(
    api: tuple[dict[str, str], SqliteStore], tmp_path: Path
) -> None:
    env, store = api
    run = CliRunner(env=env).invoke
    got = run(main, ["config", "get"])
    assert got.exit_code == 0 and json.loads(got.output)["version"] == 1
    new = tmp_path / "doc.json"
    new.write_text(json.dumps({**DOC, "nat": {"port_range": [2000, 3000]}}))
    checked = run(main, ["config", "validate", str(new)])
    assert checked.exit_code == 0 and "masquerade to :2000-3000" in checked.output
    put = run(main, ["config", "put", str(new), "--version", "1"])
    assert put.exit_code == 0, put.output
    assert store.get(2).nat.port_range == (2000, 3000)
    stale = run(main, ["config", "put", str(new), "--version", "1"])
    assert stale.exit_code == 1 and "HTTP 409" in stale.output
    assert "2" in run(main, ["config", "versions"]).output
    back = run(main, ["config", "rollback", "1"])
    assert back.exit_code == 0 and store.head() == 3


def test_bad_document_names_the_field(
    api: tuple[dict[str, str], SqliteStore], tmp_path: Path
) -> None:
    env, store = api
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**DOC, "nat": {"port_range": [2000, 70000]}}))
    result = CliRunner(env=env).invoke(main, ["config", "put", str(bad), "--version", "1"])
    assert result.exit_code == 1
    assert "HTTP 422" in result.output and "nat.port_range[1]" in result.output
    assert "Traceback" not in result.output
    assert store.head() == 1


def test_unreachable_api_is_a_clear_error() -> None:
    env = {"SPECTRA_API": "http://127.0.0.1:9", "SPECTRA_TOKEN": "x"}
    result = CliRunner(env=env).invoke(main, ["config", "get"])
    assert result.exit_code == 1 and "unreachable" in result.output
