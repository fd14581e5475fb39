"""``python -m ai`` takes the logging section of a whole document, else the settings the
environment carries (``SPECTRA_LOG_LEVEL`` / ``SPECTRA_LOG_FORMAT``), else info/json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ai.logsetup import ENV_FORMAT, ENV_LEVEL
from ai.server import _logging_of


def test_whole_document_then_environment_then_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_LEVEL, raising=False)
    monkeypatch.delenv(ENV_FORMAT, raising=False)
    section = tmp_path / "ai.json"
    section.write_text(json.dumps({"listen_port": 8090}))
    assert _logging_of(section) == ("info", "json")
    monkeypatch.setenv(ENV_LEVEL, "warning")
    monkeypatch.setenv(ENV_FORMAT, "text")
    assert _logging_of(section) == ("warning", "text")
    whole = tmp_path / "doc.json"
    whole.write_text(json.dumps({"ai": {}, "logging": {"level": "debug"}}))
    assert _logging_of(whole) == ("debug", "text")
