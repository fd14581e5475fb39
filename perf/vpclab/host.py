"""What the VPC lab takes from the namespace lab (:mod:`perf.lab`): running commands in
a namespace, detached processes, the peer XDP program. One import site, so the lab's
move into a package touches one file."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from perf.lab import Lab, LabError, daemonize, ns_exec, require_root, run_in
from perf.lab import _pids_in_netns as pids_in_netns

__all__ = [
    "LabError",
    "attach_peer_pass",
    "daemonize",
    "exclusive",
    "ns_exec",
    "pid_alive",
    "pids_in_netns",
    "require_root",
    "run_in",
    "stop_pidfile",
]


def attach_peer_pass(ns: str, ifname: str) -> None:
    """XDP_PASS on ``ifname`` and ``tx off``: native XDP redirects into its veth peer
    are delivered, and what it sends has full checksums (see ``Lab._nic_like``)."""
    Lab()._nic_like(ns, ifname)


def pid_alive(pidfile: Path) -> int | None:
    """The pid recorded in ``pidfile`` when that process runs, else None (a zombie that
    init has not reaped yet counts as gone)."""
    try:
        pid = int(pidfile.read_text())
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return None if stat.rpartition(")")[2].split()[0] == "Z" else pid


def stop_pidfile(pidfile: Path, wait: float = 3.0) -> None:
    """SIGTERM the process group recorded in ``pidfile``, SIGKILL after ``wait`` s."""
    pid = pid_alive(pidfile)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and pid_alive(pidfile):
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


@contextlib.contextmanager
def exclusive(lock_file: Path, timeout: float = 900.0) -> Iterator[None]:
    """Hold ``lock_file`` (flock) for one user of the lab at a time."""
    with lock_file.open("a") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(f"the VPC lab is busy (lock {lock_file})") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
