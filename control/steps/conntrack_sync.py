"""The conntrack-sync step: ``ha.conntrack_sync`` made real by a supervised conntrackd.

Render picks this instance's side of the pair (the member address on the sync
interface; the other member is the peer) and what not to replicate (the gateway's own
addresses, :mod:`control.conntrackd`). Apply writes ``conntrackd.conf`` under the
instance's run directory and (re)starts the daemon when the config changed or it is not
running; conntrackd has no reload, so a change is a restart, after which
``StartupResync`` asks the peer for its table again. The daemon is its own process in
its own session: it keeps syncing without the agent, and a restarted agent adopts it
(found by its config path in /proc). ``tick`` restarts it if it died, removing the
stale lock file a killed daemon leaves (conntrackd refuses to start while it exists).

The role API is for the leader lease: :meth:`ConntrackSyncStep.become_leader` runs the
"primary" transition of the conntrack-tools' keepalived script (doc/sync/primary-backup.sh:
commit the external cache into the kernel table, flush both caches, resync the internal
cache with the kernel table, send a bulk update to the peer), and
:meth:`ConntrackSyncStep.become_standby` its "backup" transition (make sure the daemon
runs, shorten the kernel's timers so a former leader's entries are purged after
PurgeTimeout, ask the leader for a resync). Like the script, every command runs even
when one before it failed; each one's result is returned and reported in the status.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any, Literal

from control import conntrackd
from control.config import ConfigDocument
from control.conntrackd import CommandResult, DaemonPaths, SyncSettings, render_config
from control.steps.base import AnyHost, ConvergeError, Host, RenderError, StepContext

log = logging.getLogger("spectra.control")

STATS_SECONDS = 5.0
START_SECONDS = 5.0
STOP_SECONDS = 5.0
RETRY_SECONDS = 5.0

Role = Literal["leader", "standby"]


@dataclass(frozen=True, slots=True)
class Transition:
    """One role change: every conntrackd command it ran, in order, with its result."""

    role: Role
    at: float
    commands: tuple[CommandResult, ...]
    external_entries: int | None = None  # the external cache just before the change
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(c.ok for c in self.commands)

    def summary(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "at": self.at,
            "ok": self.ok,
            "error": self.error,
            "external_entries": self.external_entries,
            "seconds": round(sum(c.seconds for c in self.commands), 4),
            "commands": [
                {"command": f"conntrackd {c.flag}", "what": c.what, "returncode": c.returncode,
                 "seconds": c.seconds, **({} if c.ok else {"output": c.output})}
                for c in self.commands
            ],
        }  # fmt: skip


def _pair(members: list[str], networks: list[str], host: Host) -> tuple[str, str] | None:
    """This instance's member address and its peer's: the member on the sync link, and
    the one other member in the same subnet (the AZ's other instance). ``None`` when no
    member address is on the link or no other member is in its subnet (an instance
    without a standby in its AZ)."""
    if isinstance(host, AnyHost):  # the config API's dry run knows no sync link
        return members[0], members[1]
    mine = [(n, m) for n in networks for m in members if n.partition("/")[0] == m]
    if not mine:
        return None
    if len(mine) != 1:
        raise RenderError(
            "ha.conntrack_sync.members",
            f"expected one of {', '.join(members)} on the sync interface of this "
            f"instance, which has {', '.join(n for n, _ in mine)}",
        )
    network, local = mine[0]
    subnet = ip_network(network, strict=False)
    peers = [m for m in members if m != local and ip_address(m) in subnet]
    if not peers:  # the only instance of its AZ: no standby to sync to
        return None
    if len(peers) != 1:
        raise RenderError(
            "ha.conntrack_sync.members",
            f"expected exactly one other member in {subnet} (this instance is {local}), "
            f"found {', '.join(peers) or 'none'}",
        )
    return local, peers[0]


class ConntrackSyncStep:
    name = "conntrack_sync"

    def __init__(self, context: StepContext) -> None:
        self.run_dir = context.run_dir
        self.log_dir = context.log_dir
        self.paths = DaemonPaths.under(context.run_dir, context.log_dir)
        self.settings: SyncSettings | None = None
        self.running: str | None = None  # the config text the running daemon started with
        self.pid: int | None = None
        self.restarts = 0
        self.exit_status: int | None = None  # of the last daemon of ours that exited
        self.role: Role | None = None
        self.last_transition: Transition | None = None
        self._version: str | None = None
        self._caches: dict[str, int] = {}
        self._next_stats = 0.0
        self._retry_at = 0.0
        self._lock = threading.RLock()  # the lease code calls the role API from its thread
        self._adopt()

    # -- render, apply ---------------------------------------------------------------

    @staticmethod
    def render(doc: ConfigDocument, host: Host) -> SyncSettings | None:
        sync = doc.ha.conntrack_sync
        if not sync.enabled:
            return None
        interface = sync.interface or doc.interfaces.inside
        networks = host.networks(interface)
        on_link = [n.partition("/")[0] for n in networks]
        members = [str(m) for m in sync.members]
        pair = _pair(members, networks, host)
        if pair is None:
            log.info("conntrack sync: no pair of %s on %s here; not synced", members, interface)
            return None
        local, peer = pair
        # The NAT addresses move between instances with the leadership; translated
        # flows never have them as an end (the filter matches the real ends), so they
        # stay out of the list and a takeover leaves this config as it is.
        moving = {str(z.nat_address) for z in doc.aws.zones.values()}
        if isinstance(doc.nat.outside_addresses, list):
            moving |= {str(a) for a in doc.nat.outside_addresses}
        own = [
            *host.addresses(doc.interfaces.inside),
            *host.addresses(doc.interfaces.outside),
            *on_link,
        ]
        ignore = [conntrackd.LOOPBACK, *members, *(a for a in own if a not in moving)]
        return SyncSettings(interface, local, peer, sync.port, tuple(dict.fromkeys(ignore)))

    def apply(self, part: SyncSettings | None) -> None:
        with self._lock:
            if part is None:
                self._stop()
                self.settings = None
                self.paths.config.unlink(missing_ok=True)
                return
            if shutil.which(conntrackd.BINARY) is None:
                raise ConvergeError(
                    "ha.conntrack_sync.enabled: conntrackd is not installed on this host "
                    "(Debian package conntrackd); accepted here: false"
                )
            if len(os.fsencode(self.paths.socket)) > conntrackd.SUN_PATH_MAX:
                raise ConvergeError(
                    f"the control socket path {self.paths.socket} is longer "
                    f"than a UNIX socket path may be ({conntrackd.SUN_PATH_MAX} bytes)"
                )
            text = render_config(part, self.paths)
            if text != self.running or not self._alive():
                self._start(text)
            self.settings = part

    # -- supervision -----------------------------------------------------------------

    def tick(self) -> dict[str, Any]:
        """Restart a dead daemon (at most every RETRY_SECONDS); refresh the cache counts
        every STATS_SECONDS."""
        with self._lock:
            if self.settings is None:
                return {"enabled": False}
            error = None
            now = time.monotonic()
            if not self._alive() and now >= self._retry_at:
                log.error("conntrackd died; restarting it")
                self.restarts += 1
                self._retry_at = now + RETRY_SECONDS  # a crash loop must not stall the agent
                try:
                    self._start(render_config(self.settings, self.paths))
                except ConvergeError as exc:
                    error = str(exc)
                    log.error("%s", exc)
            if now >= self._next_stats and self.pid is not None:
                self._next_stats = now + STATS_SECONDS
                self.caches()
            return {**self.status(), **({"error": error} if error else {})}

    def status(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "enabled": settings is not None,
            "running": self._alive(),
            "pid": self.pid,
            "version": self._version,
            "interface": settings.interface if settings else None,
            "local": settings.local if settings else None,
            "peer": f"{settings.peer}:{settings.port}" if settings else None,
            "internal_cache_entries": self._caches.get("internal"),
            "external_cache_entries": self._caches.get("external"),
            "restarts": self.restarts,
            "role": self.role,
            "last_transition": self.last_transition.summary() if self.last_transition else None,
        }

    def caches(self) -> dict[str, int]:
        """Active entries of the internal and external caches, asked of the daemon now."""
        result = conntrackd.command(self.paths.config, "-s", "statistics", timeout=10)
        self._caches = conntrackd.cache_sizes(result.output) if result.ok else {}
        return dict(self._caches)

    def close(self) -> None:
        """Nothing to release: conntrackd outlives the agent (adopted on restart)."""

    # -- the role API ----------------------------------------------------------------

    def become_leader(self) -> Transition:
        """Commit the replicated flows into this kernel and start replicating to the
        peer: ``-c``, ``-f``, ``-R``, ``-B`` (primary-backup.sh, "primary")."""
        with self._lock:
            if self.settings is None:
                return self._record("leader", (), error="ha.conntrack_sync is disabled")
            if not self._alive():
                # The external cache died with the daemon: nothing to commit. Start it so
                # this instance replicates its own flows from now on.
                self._start(render_config(self.settings, self.paths))
                return self._record(
                    "leader", (), error="conntrackd was not running: no external cache to commit"
                )
            before = self.caches().get("external")
            config = self.paths.config
            commands = (
                conntrackd.command(config, "-c", "commit the external cache into the kernel"),
                conntrackd.command(config, "-f", "flush the internal and external caches"),
                conntrackd.command(config, "-R", "resync the internal cache with the kernel"),
                conntrackd.command(config, "-B", "send a bulk update to the peer"),
            )
            return self._record("leader", commands, before)

    def become_standby(self) -> Transition:
        """Keep the daemon running, purge this node's old flows after PurgeTimeout and
        ask the leader for its table: ``-t``, ``-n`` (primary-backup.sh, "backup")."""
        with self._lock:
            if self.settings is None:
                return self._record("standby", (), error="ha.conntrack_sync is disabled")
            if not self._alive():
                self._start(render_config(self.settings, self.paths))
            config = self.paths.config
            commands = (
                conntrackd.command(config, "-t", "shorten the kernel's conntrack timers"),
                conntrackd.command(config, "-n", "request a resync from the leader"),
            )
            return self._record("standby", commands)

    def _record(
        self,
        role: Role,
        commands: tuple[CommandResult, ...],
        external: int | None = None,
        error: str | None = None,
    ) -> Transition:
        transition = Transition(role, time.time(), commands, external, error)
        self.role, self.last_transition = role, transition
        for c in commands:
            if not c.ok:
                log.error("becoming %s: conntrackd %s (%s) failed: %s",
                          role, c.flag, c.what, c.output)  # fmt: skip
        if error:
            log.error("becoming %s: %s", role, error)
        seconds = sum(c.seconds for c in commands)
        outcome = "ok" if transition.ok else "with errors"
        log.info("conntrack sync: %s in %.3fs (%s)", role, seconds, outcome)
        return transition

    # -- the daemon ------------------------------------------------------------------

    def _adopt(self) -> None:
        pid = _find_daemon(self.paths.config)
        if pid is None:
            return
        try:
            self.running = self.paths.config.read_text()
        except OSError:
            return
        self.pid = pid
        self._version = conntrackd.version()
        log.info("adopted the running conntrackd (pid %d)", pid)

    def _alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:  # not our child: a daemon adopted from an earlier agent
            return _is_daemon(self.pid, self.paths.config)
        if pid:
            self.exit_status = os.waitstatus_to_exitcode(status)
            return False
        # Our child, not exited (and not reaped, so its pid cannot be reused). Its
        # /proc cmdline can still be empty just after the spawn: it is not asked.
        return True

    def _start(self, text: str) -> None:
        self._stop()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.paths.lock.exists():
            # No daemon of this config runs (just stopped, or found dead): the lock file
            # is stale, left by a killed conntrackd, which would refuse to start.
            log.warning("removing conntrackd's stale lock file %s", self.paths.lock)
            self.paths.lock.unlink()
        tmp = self.paths.config.with_suffix(".conf.tmp")
        tmp.write_text(text)
        tmp.replace(self.paths.config)
        binary = shutil.which(conntrackd.BINARY) or conntrackd.BINARY
        argv = [conntrackd.BINARY, "-C", str(self.paths.config)]
        quiet = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]  # the console copy of its log: the log file has it
        self.exit_status = None
        self.pid = os.posix_spawn(binary, argv, dict(os.environ), file_actions=quiet, setsid=True)
        self.running = text
        self._version = self._version or conntrackd.version()
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if not self._alive():
                break
            if conntrackd.command(self.paths.config, "-s", "statistics", timeout=2).ok:
                log.info("conntrackd started (pid %d)", self.pid)
                return
            time.sleep(0.05)
        pid, self.pid, self.running = self.pid, None, None
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        raise ConvergeError(
            f"conntrackd did not start (exit status {self.exit_status}): {self._log_tail()}"
        )

    def _stop(self) -> None:
        if not self._alive():
            self.pid = _find_daemon(self.paths.config)  # one this step lost track of
        if self.pid is not None and self._alive():
            os.kill(self.pid, signal.SIGTERM)  # conntrackd removes its socket and lock
            deadline = time.monotonic() + STOP_SECONDS
            while self._alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._alive():
                os.kill(self.pid, signal.SIGKILL)
        self.pid = self.running = None

    def _log_tail(self) -> str:
        try:
            lines = self.paths.log.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        return " | ".join(lines[-3:]) or "empty log"


def _is_daemon(pid: int, config: Path) -> bool:
    """Whether ``pid`` is the conntrackd daemon of ``config`` (not one of its client
    commands, which carry one more argument)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().removesuffix(b"\0").split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    binary = os.fsencode(conntrackd.BINARY)
    return state != "Z" and argv == [binary, b"-C", os.fsencode(config)]


def _find_daemon(config: Path) -> int | None:
    """The pid of the conntrackd that runs with ``config``, if one does."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and _is_daemon(int(entry.name), config):
            return int(entry.name)
    return None
