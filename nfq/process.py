"""Inspector processes that outlive the agent: spawned in their own session (so a
stopped or restarted agent never takes the data plane down with it), found again by
pid file and command line, stopped by pid. Used for both engines (the built-in
``python -m nfq engine`` and Suricata).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path


def spawn(argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start ``argv`` in a new session, stdout and stderr appended to ``log``; its pid."""
    log.parent.mkdir(parents=True, exist_ok=True)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    return os.posix_spawnp(
        argv[0], list(argv), dict(os.environ) if env is None else env,
        file_actions=actions, setsid=True,
    )  # fmt: skip


def cmdline(pid: int) -> list[str] | None:
    """The live (not zombie) process's argv ([] while it is between two execs), or None."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it was our child and has exited
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    if state == "Z":
        return None
    if not raw:
        return []
    return [part.decode(errors="replace") for part in raw.rstrip(b"\0").split(b"\0")]


def is_running(pid: int | None, *markers: str) -> bool:
    """``pid`` is alive and its command line holds every marker (not a reused pid); a
    process caught between two execs (empty command line) counts as running."""
    if pid is None:
        return False
    argv = cmdline(pid)
    return argv is not None and (not argv or all(m in argv for m in markers))


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def terminate(pid: int, *markers: str, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; returns once it is gone."""
    if not is_running(pid, *markers):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while is_running(pid, *markers) and time.monotonic() < deadline:
        time.sleep(0.05)
    if is_running(pid, *markers):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        while is_running(pid, *markers):
            time.sleep(0.02)
