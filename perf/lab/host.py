"""What the lab does on the host: the root check, commands inside a namespace,
detached processes with pidfiles, the lab lock, and finding every process of a
namespace. The lab's state (pidfiles, logs, the config store of ``spectra lab run``)
lives in :data:`RUN_DIR`; its BPF pins under :data:`BPF_PIN_ROOT`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

RUN_DIR = Path("/run/spectra-lab")
BPF_PIN_ROOT = Path("/sys/fs/bpf/spectra")
LOCK_FILE = Path("/run/spectra-lab.lock")
_PROJECT_ROOT = str(Path(__file__).resolve().parents[2])


class LabError(RuntimeError):
    """The lab could not be built, inspected or removed."""


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root (network namespaces, veth links, bpffs): run it with sudo"
        )


@contextlib.contextmanager
def exclusive(timeout: float = 900.0, lock_file: Path = LOCK_FILE) -> Iterator[None]:
    """Hold a lab (``lock_file``) for one user at a time (a test session, a benchmark)."""
    with lock_file.open("a") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(
                        f"the lab is busy (lock {lock_file}) for {timeout:.0f}s"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ns_exec(ns: str, *argv: str) -> list[str]:
    """The argv that runs a command inside namespace ``ns``."""
    return ["ip", "netns", "exec", ns, *argv]


def run_in(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(ns_exec(ns, *argv), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} in {ns} failed: {proc.stderr.strip()}")
    return proc


def run_here(*argv: str, check: bool = True) -> str:
    """Run a command in the host's own namespace; its stdout."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and proc.returncode:
        raise LabError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout


def daemonize(
    argv: list[str], pidfile: Path, logfile: Path, env: dict[str, str] | None = None
) -> int:
    """Start ``argv`` detached (own session, reparented to init) and record its pid;
    ``env`` is added to this process's environment."""
    pidfile.unlink(missing_ok=True)
    script = 'echo $$ > "$0"; exec "$@" >>"$LOG" 2>&1 </dev/null'
    subprocess.run(
        ["setsid", "-f", "sh", "-c", script, str(pidfile), *argv],
        env={**os.environ, **(env or {}), "LOG": str(logfile), "PYTHONPATH": _PROJECT_ROOT},
        check=True,
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text())
            # the start time makes the record unique: a reused pid is not this process
            tmp = pidfile.with_suffix(".tmp")
            tmp.write_text(f"{pid} {_start_ticks(pid)}\n")
            tmp.replace(pidfile)
            return pid
        time.sleep(0.01)
    raise LabError(f"{argv[0]} did not start (no pid in {pidfile})")


def _stat(pid: int) -> list[str]:
    """``/proc/<pid>/stat`` after the command name: [state, ppid, ...]."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def _start_ticks(pid: int) -> int:
    """When ``pid`` started, in clock ticks after boot (field 22 of its stat)."""
    return int(_stat(pid)[19])


def pid_alive(pidfile: Path) -> int | None:
    """The pid recorded in ``pidfile`` when that process runs, else None (a zombie that
    init has not reaped yet counts as gone, and so does a process whose start time is
    not the recorded one: the recorded process died and its pid was reused -- e.g. by an
    agent, which :func:`stop` must never signal)."""
    try:
        pid, *started = (int(f) for f in pidfile.read_text().split())
        stat = _stat(pid)
    except (OSError, ValueError):
        return None
    if stat[0] == "Z" or (started and int(stat[19]) != started[0]):
        return None
    return pid


def stop(pidfile: Path, wait: float) -> None:
    """SIGTERM the process group of ``pidfile``'s process, SIGKILL it after ``wait``
    seconds, and remove the pidfile."""
    pid = pid_alive(pidfile)
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and pid_alive(pidfile):
            time.sleep(0.02)
        if pid_alive(pidfile):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)


def pids_in_netns(ns: str) -> list[int]:
    """Processes whose network namespace is ``ns`` (servers, agents, generators)."""
    try:
        target = os.stat(f"/run/netns/{ns}")
    except FileNotFoundError:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(entry / "ns" / "net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            pids.append(int(entry.name))
    return pids


def kill_all_in(ns: str) -> None:
    """SIGKILL every process of namespace ``ns``."""
    for pid in pids_in_netns(ns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if child.is_dir():
            child.rmdir()
        else:
            child.unlink()
    path.rmdir()


class StopOnce:
    """SIGINT and SIGTERM stop the run once: the first raises KeyboardInterrupt, one
    during the clean-up is ignored. pyroute2 forks helpers for namespace calls, which
    inherit the handler (and get SIGTERM when done): there it only ends the helper."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.stopping = False
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)

    def __call__(self, signum: int, _frame: object) -> None:
        if os.getpid() != self.pid:
            os._exit(128 + signum)
        if not self.stopping:
            self.stopping = True
            raise KeyboardInterrupt
