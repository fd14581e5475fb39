"""A real ``redis-server`` (the Debian package) for the tests: its own temp dir, a free
loopback port, no persistence; optionally TLS and an ACL user (as ElastiCache's
in-transit encryption and RBAC present them). Killed and restarted on the same port
to model an outage."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class RedisServer:
    dir: Path
    port: int = field(default_factory=free_port)
    tls: tuple[str, str] | None = None  # certificate and key PEM paths
    user: tuple[str, str] | None = None  # ACL user and password
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (make deps installs it)")
        args = [binary, "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", ""]
        args += ["--appendonly", "no", "--protected-mode", "yes"]
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:
            cert, key = self.tls
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert]
            args += ["--tls-key-file", key, "--tls-ca-cert-file", cert]
            args += ["--tls-auth-clients", "no"]
        if self.user is not None:
            name, password = self.user
            args += ["--user", "default", "off", "--user", name, "on", f">{password}"]
            args += ["~*", "+@all"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not listen in 10 s")

    def cli(self, *args: str) -> str:
        """``redis-cli`` against a plain (no TLS, no ACL) server."""
        done = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return done.stdout.strip()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
