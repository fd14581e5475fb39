"""Start and supervise ``suricata -q <n>...``: restart with exponential backoff when it
exits, health through the command socket, rule reload through it too.

:meth:`Supervisor.tick` does one supervision step and never blocks for long; the agent
calls it from its loop (or :meth:`run` in a thread). A process that stays up
``stable_seconds`` resets the backoff; one that fails ``unhealthy_limit`` health checks
in a row after its start-up grace is terminated and restarted.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nfq.suricata.config import SuricataPaths
from nfq.suricata.eve import EveTailer
from nfq.suricata.unixsock import UnixSocketClient, UnixSocketError

log = logging.getLogger("spectra.nfq")


@dataclass
class Supervisor:
    """Owns one Suricata process in NFQ mode."""

    paths: SuricataPaths
    queues: Sequence[int]
    binary: str = "suricata"
    netns: str | None = None
    extra_args: Sequence[str] = ()
    backoff_min: float = 1.0
    backoff_max: float = 30.0
    stable_seconds: float = 60.0
    startup_grace: float = 30.0
    health_interval: float = 5.0
    unhealthy_limit: int = 3
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    healthy: bool = False
    eve: EveTailer | None = None
    _backoff: float = 0.0
    _restart_at: float = 0.0
    _started_at: float = 0.0
    _next_health: float = 0.0
    _failures: int = 0
    _stopped: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def argv(self) -> list[str]:
        cmd = [self.binary, "-c", str(self.paths.config), "--pidfile", str(self.paths.pidfile)]
        for q in self.queues:
            cmd += ["-q", str(q)]
        cmd += list(self.extra_args)
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else cmd

    def start(self) -> None:
        with self._lock:
            self._stopped = False
            self._spawn(time.monotonic())
        if self.eve is None:
            self.eve = EveTailer(self.paths.eve, from_end=True)

    def _spawn(self, now: float) -> None:
        self.paths.pidfile.unlink(missing_ok=True)
        log_path = self.paths.log_dir / "suricata.stdout"
        self.paths.log_dir.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self._started_at = now
        self._next_health = now
        self._failures = 0
        self.healthy = False
        log.info("suricata started (pid %d): %s", self.proc.pid, " ".join(self.argv()))

    def tick(self, now: float | None = None) -> None:
        """One supervision step: restart if due, health check if due, ingest eve.json."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._stopped:
                return
            if self.proc is not None and self.proc.poll() is not None:
                rc = self.proc.returncode
                lived = now - self._started_at
                self._backoff = (
                    self.backoff_min
                    if lived >= self.stable_seconds or not self._backoff
                    else min(self._backoff * 2, self.backoff_max)
                )
                self._restart_at = now + self._backoff
                log.error(
                    "suricata exited with %s after %.1fs; restarting in %.1fs",
                    rc,
                    lived,
                    self._backoff,
                )
                self.proc = None
                self.healthy = False
            if self.proc is None:
                if now >= self._restart_at:
                    self.restarts += 1
                    self._spawn(now)
                return
            if now >= self._next_health:
                self._next_health = now + self.health_interval
                self._health(now)
        if self.eve is not None:
            self.eve.ingest()

    def _health(self, now: float) -> None:
        try:
            with UnixSocketClient(self.paths.socket, timeout=2.0) as client:
                client.command("uptime")
            self.healthy = True
            self._failures = 0
        except UnixSocketError as exc:
            self.healthy = False
            if now - self._started_at < self.startup_grace:
                return
            self._failures += 1
            log.warning(
                "suricata health check failed (%d/%d): %s",
                self._failures,
                self.unhealthy_limit,
                exc,
            )
            if self._failures >= self.unhealthy_limit and self.proc is not None:
                log.error("suricata unhealthy; terminating it for a restart")
                self._terminate(self.proc)

    def reload_rules(self, timeout: float = 120.0) -> Any:
        """Ask the running Suricata to reload its rule files (blocks until done)."""
        with UnixSocketClient(self.paths.socket, timeout=timeout) as client:
            return client.command("reload-rules")

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self.proc is not None and self.proc.poll() is None:
                self._terminate(self.proc)
            self.proc = None
        if self.eve is not None:
            self.eve.ingest()
            self.eve.close()

    def run(self, stop: threading.Event, interval: float = 0.5) -> None:
        """Supervise until ``stop`` is set (for a thread); the process is stopped after."""
        self.start()
        try:
            while not stop.wait(interval):
                self.tick()
        finally:
            self.stop()

    def status(self) -> dict[str, Any]:
        return {
            "pid": self.proc.pid if self.proc is not None else None,
            "healthy": self.healthy,
            "restarts": self.restarts,
            "argv": self.argv(),
            "eve": dict(self.eve.counters) if self.eve is not None else {},
        }
