"""The proxy step: the document's ``proxy`` section made real by a supervised Squid.

Render turns the section into :class:`control.squid.ProxySettings` (listening on every
inside address). Apply writes the password and hosts files under names that carry a
digest of their content (the running Squid keeps reading its own until it reloads),
writes the candidate config beside the live one, has Squid check it (``squid -k
parse``) and only then moves it in place and reloads (``squid -k reconfigure``) or
starts Squid. A candidate Squid refuses fails the converge and the running Squid keeps
its previous configuration. Squid runs with ``-N`` in its own session (it outlives the
agent; a restarted agent adopts it); ``tick`` restarts it if it died and reports its
version and health for ``spectra status``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from control import squid, squid_tproxy
from control.config import ConfigDocument
from control.config.aws import Aws as AwsSection
from control.config.flowlogs import Shipping
from control.daemon import Daemon
from control.nftables import NftError
from control.proxy_log import AccessLogFollower
from control.squid import Limit, ProxySettings, SquidPaths
from control.squid_hold import REOPEN_SECONDS, held, listener_inodes
from control.steps.base import ConvergeError, Host, StepContext
from control.steps.traffic_logs import shipper

log = logging.getLogger("spectra.control")

START_SECONDS = 15.0
RETRY_SECONDS = 5.0
HEALTH_SECONDS = 2.0


def _versioned(path: Path, text: str) -> Path:
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return path.with_name(f"{path.name}-{digest}")


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def _listening(address: str) -> bool:
    """Whether a TCP socket listens on ``address`` (ip:port) in this network namespace,
    from /proc/net/tcp (a probe connection would be an access-log line every time)."""
    return listener_inodes([address])[address] is not None


def _listen_of(config: str) -> list[str]:
    """The ip:port of every ``http_port`` of a squid.conf."""
    return [ln.split()[1] for ln in config.splitlines() if ln.startswith("http_port ")]


class SquidStep:
    name = "proxy"

    def __init__(self, context: StepContext) -> None:
        self.base = SquidPaths.under(context.run_dir, context.log_dir)
        self.instance = context.instance
        self.daemon = Daemon([squid.BINARY, "-N", "-f", str(self.base.config)])
        self.settings: ProxySettings | None = None
        self.running: str | None = None  # the config text the running Squid has loaded
        self.restarts = 0
        self.reconfigures = 0
        self.hold_ms: float | None = None  # new connections held by the last reconfigure
        self.last_check: str | None = None  # Squid's objection to the last candidate
        self.healthy: bool | None = None
        self._version: str | None = None
        self._retry_at = 0.0
        self._health_at = 0.0
        # an operational client (section, service) for shipping the access log: set by
        # the agent when it runs on AWS (spectra run --aws)
        self.aws_client: Callable[[AwsSection, str], Any] | None = None
        self.follower: AccessLogFollower | None = None
        self._shipping: tuple[Shipping | None, AwsSection | None] = (None, None)
        self.log_rotations = 0
        # (inside interface, TPROXY listener) the transparent mode intercepts to now
        self._intercepting: tuple[str, list[str]] | None = None
        if self.daemon.adopt():
            try:
                self.running = self.base.config.read_text()
            except OSError:
                self.running = None
            if "tproxy" in (self.running or ""):  # an adopted Squid intercepts: undo it
                self._intercepting = ("", ["adopted"])  # if the document says so
            self._version = squid.version()

    # -- render, apply ---------------------------------------------------------------

    @staticmethod
    def render(doc: ConfigDocument, host: Host) -> ProxySettings | None:
        p = doc.proxy
        if not p.enabled:
            return None
        users = {u.name: u.password.get_secret_value() for u in p.auth.users}
        limits = tuple(
            Limit(b.name, b.kbps * 1000 // 8, tuple(b.users), tuple(str(n) for n in b.networks))
            for b in p.bandwidth_limits
        )
        inside = host.addresses(doc.interfaces.inside)
        if p.transparent.enabled and not inside:
            raise ConvergeError(
                "proxy.transparent.enabled: the inside interface has no address to "
                "intercept to; accepted here: false"
            )
        return ProxySettings(
            listen=tuple(f"{a}:{p.port}" for a in inside),
            users=tuple(sorted(users.items())) if p.auth.mode == "basic" else (),
            allowed=tuple(p.allowed_domains),
            denied=tuple(p.denied_domains),
            connect_ports=tuple(sorted(set(p.connect_ports))),
            connect_domains=tuple(p.connect_domains),
            cache_mb=p.cache.size_mb if p.cache.enabled else 0,
            limits=limits,
            hosts=tuple(sorted((n, str(a)) for n, a in p.hosts.items())),
            transparent=f"{inside[0]}:{p.transparent.port}" if p.transparent.enabled else None,
            inside_interface=doc.interfaces.inside,
            access_log=p.access_log.enabled,
            log_keep=p.access_log.keep,
            log_max_bytes=p.access_log.max_bytes,
            shipping=p.access_log if p.access_log.ships() else None,
            aws=doc.aws if p.access_log.ships() else None,
        )

    def apply(self, part: ProxySettings | None) -> None:
        if part is None:
            self._follow(None, None)
            self._intercept(None)
            self.daemon.stop()
            self.settings = self.running = None
            self.base.config.unlink(missing_ok=True)
            return
        if shutil.which(squid.BINARY) is None:
            raise ConvergeError(
                "proxy.enabled: squid is not installed on this host (Debian package "
                "squid); accepted here: false"
            )
        text, paths = self._stage(part)
        if text == self.running and self.daemon.alive():
            self.settings = part
            self._follow(part.shipping, part.aws)
            self._intercept(part)
            return
        candidate = paths.config.with_name("squid.conf.next")
        _write(candidate, text)
        checked = squid.parse(candidate)
        if not checked.ok:
            self.last_check = checked.output
            raise ConvergeError(
                f"proxy: squid -k parse refused the configuration: {checked.output}"
            )
        self.last_check = None
        if part.cache_mb:
            self._cache_dir(candidate)
        candidate.replace(self.base.config)
        if self.daemon.alive():
            old = _listen_of(self.running or "")
            new = (*part.listen, *([part.transparent] if part.transparent else []))
            intercepted = bool(part.transparent) or "tproxy" in (self.running or "")
            self._reconfigure(old, new, intercepted)
        else:
            self._start()
        self.running, self.settings = text, part
        self._prune(paths)
        self._follow(part.shipping, part.aws)
        self._intercept(part)

    def _intercept(self, part: ProxySettings | None) -> None:
        """The transparent mode's nftables table and policy route, after Squid listens
        on its TPROXY port (removed when the mode is off)."""
        listen = [part.transparent] if part is not None and part.transparent else []
        inside = part.inside_interface if part is not None else ""
        if (inside, listen) == self._intercepting:
            return
        if not listen and not (self._intercepting and self._intercepting[1]):
            self._intercepting = (inside, listen)  # nothing was intercepted: no call
            return
        try:
            squid_tproxy.apply(inside, listen)
        except (NftError, RuntimeError) as exc:
            raise ConvergeError(f"proxy.transparent: {exc}") from exc
        self._intercepting = (inside, listen)

    def _follow(self, shipping: Shipping | None, aws: AwsSection | None) -> None:
        """Ship the access log's lines when the document says where (and the agent runs
        with ``--aws``); a changed destination restarts the follower."""
        make = self.aws_client
        wanted = (shipping, aws) if make is not None and aws is not None else (None, None)
        if wanted == self._shipping:
            return
        if self.follower is not None:
            self.follower.stop()
            self.follower = None
        self._shipping = wanted
        if wanted[0] is None or make is None or aws is None:
            return
        ship = shipper(wanted[0], "proxy", self.instance, 65536, lambda svc: make(aws, svc))
        if ship is not None:
            self.follower = AccessLogFollower(self.base.access_log, ship)
            self.follower.start()

    def _rotate_logs(self) -> None:
        """``squid -k rotate`` once the access log is past ``log_max_bytes`` (Squid
        renames it to ``.0`` and keeps ``log_keep`` files)."""
        s = self.settings
        try:
            size = self.base.access_log.stat().st_size
        except OSError:
            return
        if s is None or not s.access_log or size <= s.log_max_bytes or not self.daemon.alive():
            return
        proc = subprocess.run(
            [squid.BINARY, "-k", "rotate", "-f", str(self.base.config)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if proc.returncode == 0:
            self.log_rotations += 1
        else:
            log.warning("squid -k rotate failed: %s", proc.stderr.strip())

    def _stage(self, part: ProxySettings) -> tuple[str, SquidPaths]:
        """Write the password and hosts files (content-addressed); the config text."""
        self.base.config.parent.mkdir(parents=True, exist_ok=True)
        self.base.access_log.parent.mkdir(parents=True, exist_ok=True)
        passwords, hosts = squid.render_passwords(part), squid.render_hosts(part)
        paths = replace(
            self.base,
            passwords=_versioned(self.base.passwords, passwords),
            hosts=_versioned(self.base.hosts, hosts),
        )
        proxy = pwd.getpwnam(squid.EFFECTIVE_USER)
        if not paths.passwords.exists():
            _write(paths.passwords, passwords, 0o640)  # the helper runs as proxy
            os.chown(paths.passwords, 0, proxy.pw_gid)
        if not paths.hosts.exists():
            _write(paths.hosts, hosts)
        for log_file in (paths.access_log, paths.cache_log):  # reopened as proxy
            log_file.touch(mode=0o640, exist_ok=True)
            os.chown(log_file, proxy.pw_uid, proxy.pw_gid)
        return squid.render_config(part, paths), paths

    def _prune(self, paths: SquidPaths) -> None:
        """Remove the password and hosts files the running config no longer names."""
        keep = {paths.passwords, paths.hosts}
        for pattern in (f"{self.base.passwords.name}-*", f"{self.base.hosts.name}-*"):
            for old in self.base.config.parent.glob(pattern):
                if old not in keep:
                    old.unlink(missing_ok=True)

    def _cache_dir(self, config: Path) -> None:
        """Create the cache directory owned by ``proxy`` and its swap tree (squid -z)."""
        cache = self.base.cache_dir
        if (cache / "00").is_dir():
            return
        cache.mkdir(parents=True, exist_ok=True)
        proxy = pwd.getpwnam(squid.EFFECTIVE_USER)
        os.chown(cache, proxy.pw_uid, proxy.pw_gid)
        proc = subprocess.run([squid.BINARY, "-N", "-z", "-f", str(config)],
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        if proc.returncode != 0:
            raise ConvergeError(f"proxy.cache: squid -z failed: {proc.stderr.strip()[-300:]}")

    def _reconfigure(self, old: list[str], new: tuple[str, ...], intercepted: bool) -> None:
        """``squid -k reconfigure`` with new connections to the listeners Squid has
        (``old``) and will have held until it listens again (:mod:`control.squid_hold`)."""
        start = time.monotonic()
        try:
            with held(old, new, intercepted) as reopened:
                proc = subprocess.run(
                    [squid.BINARY, "-k", "reconfigure", "-f", str(self.base.config)],
                    capture_output=True, text=True, timeout=30, check=False,
                )  # fmt: skip
                if proc.returncode != 0:
                    raise ConvergeError(
                        f"proxy: squid -k reconfigure failed: {proc.stderr.strip()}"
                    )
                if not reopened():
                    log.warning("squid did not reopen %s within %.0f s of its reconfigure",
                                ", ".join(new), REOPEN_SECONDS)  # fmt: skip
        except NftError as exc:
            raise ConvergeError(f"proxy: holding new connections failed: {exc}") from exc
        self.reconfigures += 1
        self.hold_ms = round((time.monotonic() - start) * 1000, 1)
        log.info("squid reconfigured (pid %s; new connections held %.0f ms)",
                 self.daemon.pid, self.hold_ms)  # fmt: skip

    def _start(self) -> None:
        self.daemon.stop()
        self.base.pid.unlink(missing_ok=True)
        binary = shutil.which(squid.BINARY) or squid.BINARY
        self.daemon.spawn(binary, self.base.cache_log.with_name("squid-console.log"))
        self._version = self._version or squid.version()
        listen = _listen_of(self.base.config.read_text())
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and self.daemon.alive():
            if all(_listening(a) for a in listen):
                log.info("squid started (pid %s)", self.daemon.pid)
                return
            time.sleep(0.1)
        status = self.daemon.exit_status
        self.daemon.stop()
        raise ConvergeError(f"proxy: squid did not start (exit status {status}): "
                            f"{self._log_tail()}")  # fmt: skip

    def _log_tail(self) -> str:
        try:
            lines = self.base.cache_log.read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        return " | ".join(lines[-3:]) or "empty log"

    # -- supervision -----------------------------------------------------------------

    def tick(self) -> dict[str, Any]:
        if self.settings is None:
            return {"enabled": False}
        now = time.monotonic()
        error = None
        if not self.daemon.alive() and now >= self._retry_at:
            log.error("squid died (exit status %s); restarting it", self.daemon.exit_status)
            self.restarts += 1
            self._retry_at = now + RETRY_SECONDS
            try:
                self._start()
            except ConvergeError as exc:
                error = str(exc)
        if now >= self._health_at:
            self._health_at = now + HEALTH_SECONDS
            self._rotate_logs()
            self.healthy = self.daemon.alive() and all(_listening(a) for a in self.settings.listen)
        return {**self.status(), **({"error": error} if error else {})}

    def status(self) -> dict[str, Any]:
        s = self.settings
        return {
            "enabled": s is not None,
            "running": self.daemon.alive(),
            "healthy": self.healthy,
            "pid": self.daemon.pid,
            "version": self._version,
            "listen": list(s.listen) if s else [],
            "transparent": s.transparent if s else None,
            "users": len(s.users) if s else 0,
            "cache_mb": s.cache_mb if s else 0,
            "restarts": self.restarts,
            "reconfigures": self.reconfigures,
            "reconfigure_hold_ms": self.hold_ms,
            "last_check_error": self.last_check,
            "access_log": str(self.base.access_log) if s is None or s.access_log else None,
            "access_log_rotations": self.log_rotations,
            **({"access_log_shipping": self.follower.counters()} if self.follower else {}),
        }

    def close(self) -> None:
        """Stop shipping the access log; Squid outlives the agent (adopted on restart)."""
        self._follow(None, None)
