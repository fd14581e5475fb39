"""``suricata -T``: load a rendered configuration and its rules the way the running
Suricata would, without touching traffic, and turn what it reports into errors that
name the rule file and line (Suricata user guide, "Command Line Options": ``-T`` test
the configuration; a rule it cannot parse is reported as ``error parsing signature
"..." from file F at line N``, after a line saying why).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

_SIGNATURE = re.compile(
    r'error parsing signature "(?P<rule>.*)" from file (?P<file>.+) at line (?P<line>\d+)'
)
_ERROR = re.compile(r"(?:\bError: |^E: )(?:[\w-]+: )?(?P<message>.*)$")


@dataclass(frozen=True, slots=True)
class RuleFailure:
    """One rule Suricata refused: its file, line, text and Suricata's reason."""

    file: str
    line: int
    rule: str
    reason: str


class SuricataConfigError(RuntimeError):
    """``suricata -T`` refused the configuration or a rule."""

    def __init__(self, message: str, failures: tuple[RuleFailure, ...] = ()) -> None:
        super().__init__(message)
        self.failures = failures


def parse_failures(output: str) -> tuple[RuleFailure, ...]:
    """The refused rules in Suricata's log output, each with the reason logged before it."""
    failures, reason = [], ""
    for line in output.splitlines():
        sig = _SIGNATURE.search(line)
        if sig:
            failures.append(
                RuleFailure(sig["file"], int(sig["line"]), sig["rule"], reason or "invalid rule")
            )
            reason = ""
            continue
        err = _ERROR.search(line)
        if err:
            reason = err["message"].strip()
    return tuple(failures)


def check_config(config: Path, *, binary: str = "suricata", timeout: float = 300.0) -> str:
    """Run ``suricata -T -c config``; returns its output, raises :class:`SuricataConfigError`."""
    try:
        proc = subprocess.run(
            # the rendered configuration logs to a file only; -T reports on the console
            [binary, "-T", "-c", str(config), "--set", "logging.outputs.0.console.enabled=yes"],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        raise SuricataConfigError(f"{binary}: not installed on this host") from None
    except subprocess.TimeoutExpired:
        raise SuricataConfigError(f"suricata -T {config}: no answer in {timeout:.0f}s") from None
    output = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return output
    failures = parse_failures(output)
    if failures:
        first = failures[0]
        raise SuricataConfigError(
            f"{first.file} line {first.line}: {first.reason}: {first.rule}", failures
        )
    errors = [m["message"] for m in map(_ERROR.search, output.splitlines()) if m]
    raise SuricataConfigError(
        f"suricata -T {config} failed (exit {proc.returncode}): "
        + ("; ".join(errors[-3:]) or output.strip()[-500:])
    )
