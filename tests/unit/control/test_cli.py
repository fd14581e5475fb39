"""CLI bad input: usage instead of tracebacks, and a clear refusal without root."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from control.cli import main


@pytest.mark.parametrize(
    "argv",
    [["--bogus"], ["lab", "--bogus"], ["lab", "up", "--bogus"], ["run", "--nope"], ["nocmd"]],
)
def test_unknown_input_prints_usage_not_traceback(argv: list[str]) -> None:
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 2
    assert "Usage:" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "argv",
    [
        ["lab", "up"],
        ["lab", "down"],
        ["lab", "status"],
        ["lab", "run"],
        ["lab", "kill", "a1"],
        ["lab", "revive", "a1"],
        ["run"],
    ],
)
def test_privileged_commands_refuse_without_root(
    argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1
    assert "needs root" in result.output
    assert "sudo" in result.output


@pytest.mark.parametrize(
    "argv", [[], ["lab"], ["run"], ["lab", "up"], ["lab", "run"], ["lab", "kill"], ["status"]]
)
def test_help_everywhere(argv: list[str]) -> None:
    result = CliRunner().invoke(main, [*argv, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output
