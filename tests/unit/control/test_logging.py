"""The document's ``logging`` section: level and format applied to the agent's process
(and exported to the processes it spawns), JSON lines one object per record, and no
secret of the document in the agent's log."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ai.logsetup import ENV_FORMAT, ENV_LEVEL, configure, from_env
from control.agent import Agent, AgentSettings
from control.config import SECRET_FIELDS, dump_document, parse_document
from control.steps import Converger
from control.store import SqliteStore
from tests.unit.control.conftest import full
from tests.unit.control.test_converge import FakeHost, Recorder


@pytest.fixture
def log_stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The root logger writes to a buffer; everything restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.delenv(ENV_LEVEL, raising=False)
    monkeypatch.delenv(ENV_FORMAT, raising=False)
    stream = io.StringIO()
    configure("info", "text", stream=stream)
    try:
        yield stream
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        os.environ.pop(ENV_LEVEL, None)  # the agent exports them for its children
        os.environ.pop(ENV_FORMAT, None)


def secrets_of(document: dict[str, Any]) -> list[str]:
    """Every secret value of the document, as the store keeps it (revealed)."""
    data = dump_document(parse_document(document), reveal_secrets=True)
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in SECRET_FIELDS and isinstance(value, str) and value:
                    found.append(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(data)
    return found


def test_json_lines_one_object_per_record(log_stream: io.StringIO) -> None:
    configure("warning", "json", stream=log_stream)
    log = logging.getLogger("spectra.test")
    log.info("not at warning")
    log.warning("two\nlines %s", "here")
    try:
        raise OSError("boom")
    except OSError:
        log.exception("failed")
    records = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert [(r["level"], r["logger"], r["msg"]) for r in records] == [
        ("warning", "spectra.test", "two\nlines here"),
        ("error", "spectra.test", "failed"),
    ]
    assert "OSError: boom" in records[1]["exc"] and records[0]["ts"].endswith("Z")
    streams = [getattr(h, "stream", None) for h in logging.getLogger().handlers]
    assert streams.count(log_stream) == 1  # replaced, never stacked


def test_bad_settings_name_the_field(log_stream: io.StringIO) -> None:
    with pytest.raises(ValueError, match=r"logging\.level 'loud'"):
        configure("loud", "json")
    with pytest.raises(ValueError, match=r"logging\.format 'xml'"):
        configure("info", "xml")


def test_agent_applies_the_section_and_logs_no_secret(
    tmp_path: Path, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("control.agent.RUN_ROOT", tmp_path / "run")
    document = {**full(), "logging": {"level": "debug", "format": "json"}}
    secrets = secrets_of(document)
    assert len(secrets) >= 2  # the proxy password and the API token's hash
    store = SqliteStore(tmp_path / "c.db")
    calls: list[tuple[str, str]] = []
    agent = Agent(AgentSettings(instance="t", poll_seconds=0.01, manage_logging=True), store)
    agent.converger = Converger([Recorder("nft", calls, fail_on="generic")], FakeHost())
    try:
        store.put(parse_document(document), 0, "t")
        agent.poll_once()
        assert agent.state.converged
        failing = {**document, "interfaces": {**document["interfaces"], "xdp_mode": "generic"}}
        store.put(parse_document(failing), 1, "t")
        agent.poll_once()
        assert not agent.state.converged
    finally:
        store.close()
    assert (os.environ[ENV_LEVEL], os.environ[ENV_FORMAT]) == ("debug", "json")
    records = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    assert any("converged t to config version 1" in r["msg"] for r in records)
    assert any(r["level"] == "error" and "version 2" in r["msg"] for r in records)
    text = log_stream.getvalue()
    for secret in secrets:
        assert secret not in text


def test_spawned_processes_take_the_exported_settings(
    log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_LEVEL, "error")
    monkeypatch.setenv(ENV_FORMAT, "json")
    from_env("info")
    logging.getLogger("spectra.nfq").warning("below error")
    logging.getLogger("spectra.nfq").error("shown")
    [line] = log_stream.getvalue().splitlines()[-1:]
    assert json.loads(line)["msg"] == "shown"
    assert "below error" not in log_stream.getvalue()
