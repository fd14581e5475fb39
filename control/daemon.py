"""A supervised daemon of the agent: spawned in its own session, adopted after a restart.

Services the agent runs (Squid, HAProxy) outlive the agent: each runs as its own process
in its own session (``setsid``), so stopping the agent leaves it serving, and a restarted
agent finds it again by its exact command line in /proc (the config path in it is per
instance). Whether it is alive: ``waitpid`` for a child of ours (which also reaps it),
the /proc command line and state for an adopted one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("spectra.control")


def _argv(pid: int) -> list[bytes] | None:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().removesuffix(b"\0").split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    return None if state == "Z" else argv


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


class Daemon:
    """One long-running process with a fixed ``argv`` (its identity in /proc)."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.pid: int | None = None
        self.exit_status: int | None = None  # of the last process of ours that exited

    def _is_ours(self, pid: int) -> bool:
        return _argv(pid) == [os.fsencode(a) for a in self.argv]

    def find(self) -> int | None:
        """The pid of a running process with this argv (adoption), if one runs: the
        topmost one (HAProxy's workers carry their master's argv)."""
        found = [int(e.name) for e in Path("/proc").iterdir()
                 if e.name.isdigit() and self._is_ours(int(e.name))]  # fmt: skip
        top = [pid for pid in found if _parent(pid) not in found]
        return top[0] if top else None

    def adopt(self) -> bool:
        self.pid = self.find()
        if self.pid is not None:
            log.info("adopted the running %s (pid %d)", self.argv[0], self.pid)
        return self.pid is not None

    def alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # adopted from an earlier agent: not our child
            return self._is_ours(self.pid)
        if pid:
            self.exit_status = os.waitstatus_to_exitcode(status)
            return False
        return True  # our child, not reaped: its pid cannot have been reused

    def spawn(self, binary: str, stdout: Path | None = None) -> int:
        """Start the process in its own session; stdin from /dev/null, stdout and
        stderr to ``stdout`` (appended) or /dev/null."""
        out = str(stdout) if stdout else os.devnull
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        self.exit_status = None
        self.pid = os.posix_spawn(binary, self.argv, dict(os.environ), file_actions=actions,
                                  setsid=True)  # fmt: skip
        return self.pid

    def signal(self, signum: int) -> None:
        if self.pid is not None and self.alive():
            os.kill(self.pid, signum)

    def stop(self, wait: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``wait`` seconds; also one this object lost."""
        if not self.alive():
            self.pid = self.find()
        if self.pid is not None and self.alive():
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + wait
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                while self.alive():
                    time.sleep(0.01)
        self.pid = None
