"""``spectra lab run`` stops its agents however they behave: SIGTERM, then SIGKILL after
the wait, never an exception (Ctrl-C must always clean up)."""

from __future__ import annotations

import subprocess
import sys
import time

from control.cli import stop_processes

IGNORES_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
    "print('ready', flush=True); time.sleep(60)"  # fmt: skip


def _spawn(code: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            start_new_session=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def test_a_process_ignoring_sigterm_is_killed_after_the_wait() -> None:
    stubborn = _spawn(IGNORES_TERM)
    polite = _spawn("import time; print('ready', flush=True); time.sleep(60)")
    gone = _spawn("print('ready', flush=True)")
    gone.wait()
    start = time.monotonic()
    stop_processes([stubborn, polite, gone], 0.5)
    assert time.monotonic() - start < 5
    assert stubborn.returncode == -9 and polite.returncode == -15 and gone.returncode == 0
    for p in (stubborn, polite, gone):
        assert p.stdout is not None
        p.stdout.close()
