"""Worker processes of ``python -m ai``: N processes serving one port, supervised.

Each worker binds the listener with ``SO_REUSEPORT`` (Linux spreads new connections
over the sockets bound to one port: https://man7.org/linux/man-pages/man7/socket.7.html)
and runs its own event loop, so the gateway uses every core. That is only right when
the state instances must agree on is shared: with ``state.backend: redis`` the default
is one worker per core; with ``local`` budgets, rate windows and the exact cache live in
one process's memory and files, so the gateway stays one process (and says why).

The supervisor (the parent) starts the workers as ``python -m ai ... --worker I``,
restarts one that exits (1 s backoff doubling to 30 s, reset after a minute up) and
passes SIGTERM/SIGINT on, waiting for them to drain. Files a process writes on its own
are per worker: the audit log (one chain per worker, ``<stem>-w<I><suffix>``) and its
anchors (the anchor file, and the S3 anchor objects under ``<host>/<stem>-w<I>/``: each
worker anchors its own chain), the metering/state file and the semantic cache's file;
``spectra ai audit verify`` checks each worker's log. The appliance agent runs the
same supervisor in the background for its AI gateway (``control.aiworker``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from ai.config import AIConfig

log = logging.getLogger("spectra.ai")
LOCAL_REASON = (
    "state.backend is `local`: budgets, rate windows and the exact cache live in one "
    "process's memory and files, so more workers would each enforce their own; "
    "set state.backend to `redis` to run one worker per core"
)
BACKOFF_MIN_S, BACKOFF_MAX_S, STEADY_S = 1.0, 30.0, 60.0


def worker_count(config: AIConfig, requested: int | None) -> int:
    """How many workers to run; ``ValueError`` naming ``--workers`` if the backend
    cannot share state between them."""
    if config.state.backend == "local":
        if requested is not None and requested > 1:
            raise ValueError(f"--workers {requested}: {LOCAL_REASON}")
        return 1
    return requested or os.cpu_count() or 1


def _suffixed(path: Path | None, index: int) -> Path | None:
    return None if path is None else path.with_name(f"{path.stem}-w{index}{path.suffix}")


def for_worker(config: AIConfig, index: int) -> AIConfig:
    """``config`` with the files one process writes alone made per worker."""
    audit = config.audit.model_copy(
        update={
            "path": _suffixed(config.audit.path, index),
            "anchor_path": _suffixed(config.audit.anchor_path, index),
        }
    )
    state_path = _suffixed(config.state.resolved_path(config.audit), index)
    state = config.state.model_copy(update={"path": state_path})
    semantic = config.semantic_cache
    settings = semantic.resolved_settings(config.exact_cache)
    if settings is not None and settings.path is not None:
        settings = settings.model_copy(update={"path": _suffixed(settings.path, index)})
        semantic = semantic.model_copy(update={"settings": settings})
    return config.model_copy(update={"audit": audit, "state": state, "semantic_cache": semantic})


class Supervisor:
    """Starts ``count`` workers from ``argv`` (plus ``--worker I``), keeps them running.

    ``command`` is what ``argv`` follows: ``python -m ai`` by default; the appliance
    agent passes its own worker entry (``control.aiworker``), which reads the document
    from the config store (:meth:`start_background` there, :meth:`run` here)."""

    def __init__(self, argv: list[str], count: int, command: list[str] | None = None) -> None:
        self._argv = argv
        self._count = count
        self._command = command or [sys.executable, "-m", "ai"]
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._started: dict[int, float] = {}
        self._backoff: dict[int, float] = {}
        self._due: dict[int, float] = {}
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.values() if p.poll() is None]

    def _spawn(self, index: int) -> None:
        cmd = [*self._command, *self._argv, "--worker", str(index)]
        self._procs[index] = subprocess.Popen(cmd)
        self._started[index] = time.monotonic()

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signum)

    def _start(self) -> None:
        log.info("starting %d AI gateway workers (SO_REUSEPORT)", self._count)
        for index in range(self._count):
            self._spawn(index)

    def _wait(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        for proc in self._procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def run(self) -> int:
        """In the foreground (``python -m ai``): until SIGTERM/SIGINT, passed on."""
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self._start()
        while not self._stopping:
            time.sleep(0.2)
            self._tend()
        self._wait()
        return 0

    def start_background(self) -> None:
        """Start the workers and tend them from a thread (a host process that has its
        own signal handling: the agent); :meth:`stop` ends them."""
        self._start()

        def tend() -> None:
            while not self._stopping:
                time.sleep(0.2)
                self._tend()

        self._thread = threading.Thread(target=tend, name="spectra-ai-workers", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every worker (they drain) and wait, killing those still up after
        ``timeout_s``."""
        self._stop(signal.SIGTERM, None)
        if self._thread is not None:
            self._thread.join()
        self._wait(timeout_s)

    def _tend(self) -> None:
        now = time.monotonic()
        for index, proc in list(self._procs.items()):
            if proc.poll() is None or self._stopping:
                continue
            if index not in self._due:
                up = now - self._started[index]
                backoff = self._backoff.get(index, 0.0)
                backoff = (
                    BACKOFF_MIN_S
                    if up > STEADY_S
                    else min(max(backoff * 2, BACKOFF_MIN_S), BACKOFF_MAX_S)
                )
                self._backoff[index], self._due[index] = backoff, now + backoff
                log.error(
                    "AI gateway worker %d exited with %s; restarting in %.0f s",
                    index,
                    proc.returncode,
                    backoff,
                )
            elif now >= self._due[index]:
                del self._due[index]
                self._spawn(index)
