"""The tier policy: a missing prerequisite skips, except under CI=true where it fails."""

from __future__ import annotations

import pytest

from tests.tiers import missing_prerequisite, require


def test_without_root_every_privileged_tier_names_the_need(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    for tier in ("bpf", "netns", "e2e"):
        assert missing_prerequisite(tier) == f"the {tier} tier needs root"


def test_missing_prerequisite_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs root"):
        require("netns")


def test_missing_prerequisite_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: the bpf tier needs root"):
        require("bpf")


def test_missing_tool_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 0)
    monkeypatch.setattr("shutil.which", lambda tool: None if tool == "iperf3" else "/bin/x")
    assert missing_prerequisite("netns") == "the netns tier needs iperf3 (run `make deps`)"
