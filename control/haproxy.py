"""HAProxy (2.6) for the appliance's TLS termination: its config, its checks, its sockets.

The ``tls`` section in haproxy.cfg terms (HAProxy 2.6 Configuration Manual): one
``frontend`` per listener binding ``:port ssl crt <pem>`` (certificate, chain and key in
one file), a ``backend`` with its servers and TCP health checks; TLS defaults follow
Mozilla's "intermediate" profile (TLS 1.2 and 1.3, ECDHE with AES-GCM / ChaCha20 only,
no tickets); a listener's ``routes`` send requests by path (HAProxy's ``path`` ACL, an
exact match) to their own backends before the default one; ``hsts`` adds
``Strict-Transport-Security`` (RFC 6797, one year); ``redirect_http_port`` is a
plain-HTTP frontend answering 301 to the same host and path on https (RFC 9110 §15.4.2).

HAProxy runs in master-worker mode (``-W``) with a master CLI socket (``-S``): a reload
is the master's ``reload`` command, which starts new workers on the listening sockets
the master keeps, while the old workers finish their connections, so a reload drops
nothing. ``haproxy -c`` checks a candidate file first. The workers' stats socket gives
each backend server's state (``show stat``).
"""

from __future__ import annotations

import csv
import io
import re
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

BINARY = "haproxy"
CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
CIPHERSUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
HSTS = "max-age=31536000"


@dataclass(frozen=True, slots=True)
class Route:
    """Requests whose path is one of ``paths`` go to the backend ``<listener>_<name>``."""

    name: str
    paths: tuple[str, ...]
    backends: tuple[tuple[str, int, int], ...]  # (address, port, weight)


@dataclass(frozen=True, slots=True)
class Listener:
    """One TLS frontend and its backend, as rendered for this instance."""

    name: str
    port: int
    mode: str
    backends: tuple[tuple[str, int, int], ...]  # (address, port, weight)
    hsts: bool
    redirect_http_port: int | None
    certificate_arn: str | None
    certificate_file: str | None
    private_key_file: str | None
    routes: tuple[Route, ...] = ()  # mode http: by path, before the default backend


@dataclass(frozen=True, slots=True)
class HaproxyPaths:
    config: Path
    master_socket: Path
    stats_socket: Path
    pid: Path
    certs: Path  # one <listener>.pem each

    @classmethod
    def under(cls, run_dir: Path) -> HaproxyPaths:
        base = run_dir / "haproxy"
        return cls(base / "haproxy.cfg", base / "master.sock", base / "stats.sock",
                   base / "haproxy.pid", base / "certs")  # fmt: skip

    def pem(self, listener: str) -> Path:
        return self.certs / f"{listener}.pem"


def render_config(listeners: tuple[Listener, ...], paths: HaproxyPaths) -> str:
    """haproxy.cfg for ``listeners``; deterministic."""
    out = [
        "# rendered by the Cloud Spectra agent; changes here are overwritten",
        "global",
        f"  stats socket {paths.stats_socket} mode 600 level admin",
        f"  pidfile {paths.pid}",
        f"  ssl-default-bind-ciphers {CIPHERS}",
        f"  ssl-default-bind-ciphersuites {CIPHERSUITES}",
        "  ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets",
        "defaults",
        "  timeout connect 5s",
        "  timeout client 60s",
        "  timeout server 60s",
        "  timeout http-request 10s",
        "  default-server inter 2s fall 3 rise 2",
    ]
    for ln in listeners:
        out += ["", f"frontend {ln.name}", f"  mode {ln.mode}",
                f"  bind :{ln.port} ssl crt {paths.pem(ln.name)}"
                + (" alpn h2,http/1.1" if ln.mode == "http" else "")]  # fmt: skip
        if ln.mode == "http":
            out += ["  option forwardfor", "  http-request set-header X-Forwarded-Proto https"]
        if ln.hsts:
            out += [f'  http-response set-header Strict-Transport-Security "{HSTS}"']
        for route in ln.routes:
            out += [f"  acl {route.name}_path path {' '.join(route.paths)}",
                    f"  use_backend {ln.name}_{route.name} if {route.name}_path"]  # fmt: skip
        out += [f"  default_backend {ln.name}"]
        out += _backend(ln.name, ln.mode, ln.backends)
        for route in ln.routes:
            out += _backend(f"{ln.name}_{route.name}", ln.mode, route.backends)
        if ln.redirect_http_port:
            target = "" if ln.port == 443 else f":{ln.port}"
            out += ["", f"frontend {ln.name}_http", "  mode http",
                    f"  bind :{ln.redirect_http_port}",
                    "  http-request redirect code 301 location "
                    f"https://%[req.hdr(host),field(1,:)]{target}%[capture.req.uri]"]  # fmt: skip
    return "\n".join(out) + "\n"


def _backend(name: str, mode: str, servers: tuple[tuple[str, int, int], ...]) -> list[str]:
    return ["", f"backend {name}", f"  mode {mode}"] + [
        f"  server s{i} {a}:{p} weight {w} check" for i, (a, p, w) in enumerate(servers)
    ]


@dataclass(frozen=True, slots=True)
class Checked:
    ok: bool
    output: str


def check(config: Path, timeout: float = 30.0) -> Checked:
    """``haproxy -c -f config``: HAProxy's own check (it loads the certificates too)."""
    proc = subprocess.run([BINARY, "-c", "-q", "-f", str(config)], capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "ALERT" in ln]
    return Checked(proc.returncode == 0, " | ".join(lines[-3:]) or proc.stderr.strip())


def command(sock: Path, line: str, timeout: float = 5.0) -> str:
    """One command on a HAProxy CLI socket (master or stats); its whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock))
        s.sendall(line.encode() + b"\n")
        s.shutdown(socket.SHUT_WR)  # end of input: the CLI answers, then closes
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def server_states(stats_csv: str) -> dict[str, dict[str, str]]:
    """``show stat`` (CSV) -> {"backend/server": {"status": "UP", "check": "L4OK"}}."""
    text = stats_csv.lstrip("# ")
    found: dict[str, dict[str, str]] = {}
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("svname") in ("FRONTEND", "BACKEND", None):
            continue
        found[f"{row['pxname']}/{row['svname']}"] = {
            "status": row.get("status", ""),
            "check": row.get("check_status", ""),
        }
    return found


def version() -> str | None:
    try:
        out = subprocess.run([BINARY, "-v"], capture_output=True, text=True, timeout=10,
                             check=False).stdout  # fmt: skip
    except OSError:
        return None
    found = re.search(r"version (\S+)", out)
    return found.group(1) if found else None
