"""The TLS step: the document's ``tls`` section made real by a supervised HAProxy.

Render checks every certificate given as files (its key matches, it has not expired:
:mod:`control.tls_certs`), naming the field, so the config API's dry run refuses it.
``tls.appliance`` is one more frontend (:func:`appliance_listener`): the config API
and dashboard, and the AI gateway's paths, over HTTPS with HSTS.
Apply builds each listener's PEM (files, or an ACM export through ``acm_client``, which
``spectra run --aws`` sets to the operational role's ACM client of the document's
``aws`` section) under a name carrying its digest, writes the candidate config beside
the live one, has HAProxy check it (``haproxy -c``), then moves it in place and reloads
through the master socket (seamless: the master keeps the listening sockets) or starts
HAProxy. A candidate
HAProxy refuses fails the converge; the running one keeps its configuration. ``tick``
restarts a dead HAProxy, re-reads the certificates (files every ``CERT_SECONDS``, ACM
every ``ACM_SECONDS``; a renewed one is a reload, not a restart) and reports the version
and each backend server's state.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from control import haproxy
from control.aws.session import RoleInert
from control.config import ConfigDocument
from control.config.aws import Aws as AwsSection
from control.config.proxies import APPLIANCE, ApplianceTls, CertificateSource
from control.daemon import Daemon
from control.haproxy import HaproxyPaths, Listener, Route
from control.steps.base import ConvergeError, Host, RenderError, StepContext
from control.tls_certs import CertificateError, acm_export, check_pair

log = logging.getLogger("spectra.control")

START_SECONDS = 10.0
RETRY_SECONDS = 5.0
CERT_SECONDS = 5.0  # a renewed certificate file is live within this
ACM_SECONDS = 3600.0  # ACM renews 60 days before expiry: hourly export is plenty
STATS_SECONDS = 2.0
# the AI gateway's endpoints (ai.server.create_app), sent to it by tls.appliance
# the AI gateway's paths behind the appliance's HTTPS port; its /metrics is the config
# API's path there, so the AI gateway's own is scraped on its port from loopback
AI_GATEWAY_PATHS = ("/v1/chat/completions", "/v1/messages", "/v1/embeddings", "/v1/models",
                    "/v1/spectra/state")  # fmt: skip


def _read(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise RenderError(field, f"cannot read {path}: {exc.strerror}") from None


def _check_files(source: CertificateSource, at: str) -> None:
    """A certificate given as files: readable, its key matches, not expired."""
    if source.certificate_file and source.private_key_file:
        cert = _read(source.certificate_file, f"{at}.certificate_file")
        key = _read(source.private_key_file, f"{at}.private_key_file")
        try:
            check_pair(cert, key)
        except CertificateError as exc:
            raise RenderError(f"{at}.certificate_file", str(exc)) from None


def _field(part: tuple[Listener, ...], index: int) -> str:
    """The document path of ``part[index]`` (the appliance's frontend comes first)."""
    if part[index].name == APPLIANCE:
        return "tls.appliance"
    return f"tls.listeners[{index - (part[0].name == APPLIANCE)}]"


def _loopback(host: str) -> str:
    """Where HAProxy reaches a server bound to ``host`` (any address: loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def appliance_listener(doc: ConfigDocument, appliance: ApplianceTls) -> Listener:
    """The appliance's own HTTPS frontend: the config API and dashboard by default, the
    AI gateway's paths (when it serves: routes and a port) to the AI gateway; HSTS."""
    routes: tuple[Route, ...] = ()
    ai = doc.ai
    if ai.routes and ai.listen_port:
        routes = (Route("ai", AI_GATEWAY_PATHS, ((_loopback(ai.listen_host), ai.listen_port, 1),)),)
    api = ((_loopback(str(doc.api.host)), doc.api.port, 1),)
    return Listener(APPLIANCE, appliance.port, "http", api, True, appliance.redirect_http_port,
                    appliance.certificate_arn, appliance.certificate_file,
                    appliance.private_key_file, routes)  # fmt: skip


@dataclass(frozen=True, slots=True)
class TlsPart:
    """What the step applies: the frontends, and the ``aws`` section ACM exports use."""

    listeners: tuple[Listener, ...]
    aws: AwsSection


class HaproxyStep:
    name = "tls"
    # an operational ACM client for a document's aws section: set by the agent when it
    # runs on AWS (spectra run --aws)
    acm_client: Callable[[AwsSection], Any] | None = None

    def __init__(self, context: StepContext) -> None:
        self.paths = HaproxyPaths.under(context.run_dir)
        self.console = context.log_dir / "haproxy-console.log"
        self.daemon = Daemon([haproxy.BINARY, "-W", "-S", str(self.paths.master_socket),
                              "-f", str(self.paths.config)])  # fmt: skip
        self.part: TlsPart | None = None
        self.running: str | None = None
        self.restarts = 0
        self.reloads = 0
        self.last_check: str | None = None
        self.servers: dict[str, dict[str, str]] = {}
        self._version: str | None = None
        self._retry_at = self._cert_at = self._stats_at = 0.0
        if self.daemon.adopt():
            try:
                self.running = self.paths.config.read_text()
            except OSError:
                self.running = None
            self._version = haproxy.version()

    @staticmethod
    def render(doc: ConfigDocument, host: Host) -> TlsPart | None:
        tls = doc.tls
        if not tls.enabled or not (tls.listeners or tls.appliance):
            return None
        out = []
        if tls.appliance is not None:
            _check_files(tls.appliance, "tls.appliance")
            out.append(appliance_listener(doc, tls.appliance))
        for i, ln in enumerate(tls.listeners):
            _check_files(ln, f"tls.listeners[{i}]")
            out.append(Listener(
                ln.name, ln.port, ln.mode,
                tuple((str(b.address), b.port, b.weight) for b in ln.backends),
                ln.hsts, ln.redirect_http_port, ln.certificate_arn,
                ln.certificate_file, ln.private_key_file,
            ))  # fmt: skip
        return TlsPart(tuple(out), doc.aws)

    # -- apply -----------------------------------------------------------------------

    @property
    def listeners(self) -> tuple[Listener, ...] | None:
        return None if self.part is None else self.part.listeners

    def apply(self, part: TlsPart | None) -> None:
        if part is None:
            self.daemon.stop()
            self.part = self.running = None
            self.paths.config.unlink(missing_ok=True)
            return
        if shutil.which(haproxy.BINARY) is None:
            raise ConvergeError("tls.enabled: haproxy is not installed on this host (Debian "
                                "package haproxy); accepted here: false")  # fmt: skip
        self._converge(part)
        self.part = part

    def _converge(self, part: TlsPart) -> None:
        paths, listeners = self.paths, part.listeners
        paths.certs.mkdir(parents=True, exist_ok=True)
        pems = {
            ln.name: self._pem(_field(listeners, i), ln, part.aws) for i, ln in enumerate(listeners)
        }
        text = haproxy.render_config(listeners, paths)
        for name, pem in pems.items():  # content-addressed: the live files stay as they are
            text = text.replace(f"crt {paths.pem(name)}", f"crt {pem}")
        if text == self.running and self.daemon.alive():
            return
        candidate = paths.config.with_name("haproxy.cfg.next")
        candidate.write_text(text)
        checked = haproxy.check(candidate)
        if not checked.ok:
            self.last_check = checked.output
            raise ConvergeError(f"tls: haproxy -c refused the config: {checked.output}")
        self.last_check = None
        candidate.replace(paths.config)
        if self.daemon.alive():
            self._reload()
        else:
            self._start()
        self.running = text
        keep = set(pems.values())
        for old in paths.certs.glob("*.pem"):
            if old not in keep:
                old.unlink(missing_ok=True)

    def _pem(self, at: str, ln: Listener, aws: AwsSection) -> Path:
        try:
            if ln.certificate_arn:
                if self.acm_client is None:
                    raise ConvergeError(
                        f"{at}.certificate_arn: ACM needs the agent's AWS session "
                        "(spectra run --aws); use certificate files"
                    )
                cert, key = acm_export(self.acm_client(aws), ln.certificate_arn)
            else:
                assert ln.certificate_file and ln.private_key_file
                cert = Path(ln.certificate_file).read_bytes()
                key = Path(ln.private_key_file).read_bytes()
            check_pair(cert, key)
        except (OSError, CertificateError, ClientError, BotoCoreError, RoleInert,
                ValueError) as exc:  # fmt: skip
            field = "certificate_arn" if ln.certificate_arn else "certificate_file"
            raise ConvergeError(f"{at}.{field}: {exc}") from None
        data = cert.rstrip(b"\n") + b"\n" + key
        path = self.paths.certs / f"{ln.name}-{hashlib.sha256(data).hexdigest()[:12]}.pem"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            tmp.replace(path)
        return path

    def _reload(self) -> None:
        before = self._reload_count()
        try:
            haproxy.command(self.paths.master_socket, "reload")
        except OSError as exc:
            raise ConvergeError(f"tls: the master socket refused the reload: {exc}") from exc
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self._reload_count() > before:
                self.reloads += 1
                log.info("haproxy reloaded (master pid %s)", self.daemon.pid)
                return
            time.sleep(0.05)
        raise ConvergeError("tls: haproxy did not start new workers after the reload")

    def _reload_count(self) -> int:
        """The master's reload counter (``show proc``: the master's line, third column:
        ``5022  master  0 [failed: 0]  0d00h00m01s  2.6.12``)."""
        try:
            out = haproxy.command(self.paths.master_socket, "show proc")
        except OSError:
            return -1
        for line in out.splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[1] == "master" and fields[2].isdigit():
                return int(fields[2])
        return -1

    def _start(self) -> None:
        self.daemon.stop()
        self.console.parent.mkdir(parents=True, exist_ok=True)
        binary = shutil.which(haproxy.BINARY) or haproxy.BINARY
        self.daemon.spawn(binary, self.console)
        self._version = self._version or haproxy.version()
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and self.daemon.alive():
            if self._reload_count() >= 0 and self.paths.stats_socket.exists():
                log.info("haproxy started (master pid %s)", self.daemon.pid)
                return
            time.sleep(0.05)
        status = self.daemon.exit_status
        self.daemon.stop()
        raise ConvergeError(f"tls: haproxy did not start (exit status {status})")

    # -- supervision -----------------------------------------------------------------

    def tick(self) -> dict[str, Any]:
        if self.part is None or self.listeners is None:
            return {"enabled": False}
        now = time.monotonic()
        error = None
        try:
            if not self.daemon.alive() and now >= self._retry_at:
                log.error("haproxy died (exit status %s); restarting it", self.daemon.exit_status)
                self.restarts += 1
                self._retry_at = now + RETRY_SECONDS
                self.running = None
                self._converge(self.part)
            elif now >= self._cert_at:  # a renewed certificate: a reload, not a restart
                acm = any(ln.certificate_arn for ln in self.listeners)
                self._cert_at = now + (ACM_SECONDS if acm else CERT_SECONDS)
                self._converge(self.part)
        except ConvergeError as exc:
            error = str(exc)
            log.error("%s", exc)
        if now >= self._stats_at:
            self._stats_at = now + STATS_SECONDS
            try:
                raw = haproxy.command(self.paths.stats_socket, "show stat")
                self.servers = haproxy.server_states(raw)
            except OSError:
                self.servers = {}
        return {**self.status(), **({"error": error} if error else {})}

    def status(self) -> dict[str, Any]:
        return {
            "enabled": self.listeners is not None,
            "running": self.daemon.alive(),
            "healthy": self.daemon.alive() and bool(self.servers) and all(
                s["status"] == "UP" for s in self.servers.values()),
            "pid": self.daemon.pid,
            "version": self._version,
            "listeners": [f"{ln.name}:{ln.port}" for ln in self.listeners or ()],
            "servers": self.servers,
            "restarts": self.restarts,
            "reloads": self.reloads,
            "last_check_error": self.last_check,
        }  # fmt: skip

    def close(self) -> None:
        """Nothing to release: HAProxy outlives the agent (adopted on restart)."""
