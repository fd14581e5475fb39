"""Helpers for tests that run real traffic in the lab."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from control.agent import read_state
from perf.lab import ns_exec


def sh(ns: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ns_exec(ns, *argv), capture_output=True, text=True, timeout=timeout, check=False
    )


def http_get_json(ns: str, url: str) -> dict[str, Any]:
    proc = sh(ns, "curl", "-s", "-m", "5", url)
    assert proc.returncode == 0, f"curl {url} from {ns} failed: rc={proc.returncode}"
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


@contextmanager
def agent(netns: str, *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    """``spectra run`` inside ``netns``, converged, stopped on exit."""
    with (
        tempfile.TemporaryFile() as err,
        subprocess.Popen(
            [sys.executable, "-m", "control", "run", "--netns", netns, *extra],
            stdout=subprocess.DEVNULL,
            stderr=err,
        ) as proc,
    ):
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                st = read_state(netns)
                if st and st["pid"] == proc.pid and st["converged"]:
                    break
                if proc.poll() is not None:
                    err.seek(0)
                    raise AssertionError(f"agent exited: {err.read().decode()}")
                time.sleep(0.05)
            else:
                raise AssertionError(f"agent in {netns} did not converge in 30 s")
            yield proc
        finally:
            proc.terminate()
            proc.wait(timeout=10)
