"""Start and supervise ``suricata -c CONF -q <n>...`` in NFQ IPS mode.

Suricata runs in its own session (:func:`nfq.process.spawn`), so it outlives the agent;
its pid is kept in ``spectra-suricata.pid`` and a new supervisor adopts the process it
finds there (same pid, same configuration path on its command line). :meth:`tick` does
one supervision step and never blocks for long: a dead Suricata is restarted with
exponential backoff (reset once a process stayed up ``stable_seconds``); every
``health_interval`` the unix-command socket is asked for ``uptime``, the rule set's
``ruleset-stats`` and the packet counters (``dump-counters``); one that fails
``unhealthy_limit`` checks in a row after its start-up grace is restarted. Rules are
reloaded through the socket (``reload-rules``): Suricata swaps detection engines while
it keeps verdicting packets, so a reload loses nothing (Suricata user guide, "Rule
Reloads" and "Interacting via Unix Socket").
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfq import process
from nfq.suricata.config import SuricataPaths
from nfq.suricata.unixsock import UnixSocketClient, UnixSocketError

log = logging.getLogger("spectra.nfq")

PID_FILE = "spectra-suricata.pid"
START_BANNER = "This is Suricata version"
ERROR_MARK = re.compile(r"\b(Error|Critical|Alert|Emergency): ")  # Suricata 7 log levels


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def packet_counters(counters: dict[str, Any]) -> dict[str, int]:
    """The packet figures of ``dump-counters`` (Suricata 7 stats names)."""
    ips = counters.get("ips", {}) if isinstance(counters.get("ips"), dict) else {}
    decoder = counters.get("decoder", {}) if isinstance(counters.get("decoder"), dict) else {}
    detect = counters.get("detect", {}) if isinstance(counters.get("detect"), dict) else {}
    return {
        "packets": _int(decoder.get("pkts")),
        "bytes": _int(decoder.get("bytes")),
        "accepted": _int(ips.get("accepted")),
        "blocked": _int(ips.get("blocked")),
        "rejected": _int(ips.get("rejected")),
        "alerts": _int(detect.get("alert")),
    }


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
    startup_grace: float = 120.0
    health_interval: float = 5.0
    unhealthy_limit: int = 3
    pid: int | None = None
    restarts: int = 0
    healthy: bool = False
    version: str | None = None
    ruleset: dict[str, int] = field(default_factory=dict)
    packets: dict[str, int] = field(default_factory=dict)
    _backoff: float = 0.0
    _restart_at: float = 0.0
    _started_at: float = 0.0
    _next_health: float = 0.0
    _failures: int = 0
    _stopped: bool = True
    _last_error: str = ""

    def argv(self) -> list[str]:
        cmd = [self.binary, "-c", str(self.paths.config), "--pidfile", str(self.paths.pidfile)]
        for q in self.queues:
            cmd += ["-q", str(q)]
        cmd += list(self.extra_args)
        return ["ip", "netns", "exec", self.netns, *cmd] if self.netns else cmd

    @property
    def pid_file(self) -> Path:
        return self.paths.run_dir / PID_FILE

    def alive(self) -> bool:
        return process.is_running(self.pid, str(self.paths.config))

    def adopt(self) -> bool:
        """Take over the Suricata the pid file names, if it still runs this config."""
        pid = process.read_pid(self.pid_file)
        if not process.is_running(pid, str(self.paths.config)):
            return False
        self.pid, self._stopped = pid, False
        self._started_at = time.monotonic() - self.stable_seconds  # not a fresh start
        self._next_health = 0.0
        log.info("adopted the running suricata (pid %s)", pid)
        return True

    def start(self, wait: float | None = None) -> None:
        """Spawn Suricata; with ``wait``, block until its socket answers (or raise)."""
        self._stopped = False
        self._spawn(time.monotonic())
        if wait is not None:
            self.wait_ready(wait)

    def wait_ready(self, timeout: float) -> None:
        """Until the command socket answers; RuntimeError (with the log's tail) if it dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"suricata exited at start: {self.log_tail()}")
            if self._health(time.monotonic()):
                return
            time.sleep(0.1)
        raise RuntimeError(f"suricata not ready after {timeout:.0f}s: {self.log_tail()}")

    def log_tail(self, size: int = 800) -> str:
        """Why the last run ended: the errors of its ``suricata.log`` (from its start
        banner on), else the tail of its stdout."""
        log_dir = self.paths.log_dir
        with contextlib.suppress(OSError):
            text = (log_dir / "suricata.log").read_text(errors="replace")
            run = text[text.rfind(START_BANNER) :] if START_BANNER in text else text
            errors = [line for line in run.splitlines() if ERROR_MARK.search(line)]
            if errors:
                return "\n".join(errors)[-size:]
        try:
            text = (log_dir / "suricata.stdout").read_text(errors="replace")
        except OSError:
            return "(no output)"
        return text[-size:].strip() or "(no output)"

    def _spawn(self, now: float) -> None:
        self.paths.pidfile.unlink(missing_ok=True)
        self.paths.socket.unlink(missing_ok=True)
        self.pid = process.spawn(self.argv(), self.paths.log_dir / "suricata.stdout")
        self.paths.run_dir.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(str(self.pid))
        self._started_at = now
        self._next_health = now
        self._failures = 0
        self.healthy = False
        log.info("suricata started (pid %d): %s", self.pid, " ".join(self.argv()))

    def tick(self, now: float | None = None) -> None:
        """One supervision step: restart if due, health check (and stats) if due."""
        now = time.monotonic() if now is None else now
        if self._stopped:
            return
        if self.pid is not None and not self.alive():
            lived = now - self._started_at
            self._backoff = (
                self.backoff_min
                if lived >= self.stable_seconds or not self._backoff
                else min(self._backoff * 2, self.backoff_max)
            )
            self._restart_at = now + self._backoff
            log.error("suricata (pid %d) exited after %.1fs; restarting in %.1fs",
                      self.pid, lived, self._backoff)  # fmt: skip
            self.pid, self.healthy = None, False
        if self.pid is None:
            if now >= self._restart_at:
                self.restarts += 1
                self._spawn(now)
            return
        if now >= self._next_health:
            self._next_health = now + self.health_interval
            if not self._health(now):
                self._unhealthy(now)

    def _health(self, now: float) -> bool:
        try:
            with UnixSocketClient(self.paths.socket, timeout=2.0) as client:
                client.command("uptime")
                if self.version is None:
                    self.version = str(client.command("version"))
                stats = client.command("ruleset-stats")
                counters = client.command("dump-counters")
        except UnixSocketError as exc:
            self.healthy = False
            self._last_error = str(exc)
            return False
        if isinstance(stats, list) and stats and isinstance(stats[0], dict):
            self.ruleset = {
                "rules_loaded": _int(stats[0].get("rules_loaded")),
                "rules_failed": _int(stats[0].get("rules_failed")),
            }
        if isinstance(counters, dict):
            self.packets = packet_counters(counters)
        self.healthy, self._failures = True, 0
        return True

    def _unhealthy(self, now: float) -> None:
        if now - self._started_at < self.startup_grace:
            return
        self._failures += 1
        log.warning("suricata health check failed (%d/%d): %s", self._failures,
                    self.unhealthy_limit, self._last_error)  # fmt: skip
        if self._failures >= self.unhealthy_limit and self.pid is not None:
            log.error("suricata unhealthy; terminating it for a restart")
            process.terminate(self.pid, str(self.paths.config))

    def reload_rules(self, timeout: float = 300.0) -> Any:
        """Ask the running Suricata to reload its rule files (blocks until done)."""
        with UnixSocketClient(self.paths.socket, timeout=timeout) as client:
            result = client.command("reload-rules")
        self._next_health = 0.0  # fresh rule counts at the next tick
        return result

    def stop(self) -> None:
        """Terminate Suricata (SIGTERM, then SIGKILL) and forget it."""
        self._stopped = True
        if self.pid is not None:
            process.terminate(self.pid, str(self.paths.config))
        self.pid, self.healthy = None, False
        self.pid_file.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        state = (
            "stopped"
            if self._stopped
            else "running"
            if self.healthy
            else ("starting" if self.pid is not None else "restarting")
        )
        return {
            "state": state,
            "pid": self.pid,
            "version": self.version,
            "restarts": self.restarts,
            **self.ruleset,
            **{f"packets_{k}" if k != "packets" else k: v for k, v in self.packets.items()},
        }
