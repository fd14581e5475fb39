"""Client of Suricata's unix-command socket (``unix-command`` in suricata.yaml).

Protocol (Suricata user guide, "Interacting via Unix Socket"): JSON objects over a
stream socket. The client opens with ``{"version": "0.2"}`` and gets
``{"return": "OK"}``; then each command ``{"command": NAME, "arguments": {...}}`` gets
``{"return": "OK"|"NOK", "message": ...}``. Replies may or may not end in a newline, so
the reader accumulates until one complete JSON object decodes.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

PROTOCOL_VERSION = "0.2"


class UnixSocketError(RuntimeError):
    """Suricata's command socket is unreachable, or a command returned NOK."""


class UnixSocketClient:
    """One connection to the command socket; use as a context manager."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def __enter__(self) -> UnixSocketClient:
        self.connect()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            raise UnixSocketError(f"cannot connect to {self.path}: {exc}") from exc
        self._sock = sock
        try:
            reply = self._exchange({"version": PROTOCOL_VERSION})
        except BaseException:
            self.close()  # __exit__ never runs when __enter__ raises
            raise
        if reply.get("return") != "OK":
            self.close()
            raise UnixSocketError(f"{self.path} refused protocol {PROTOCOL_VERSION}: {reply}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def command(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run ``name``; returns the reply's ``message``; NOK raises UnixSocketError."""
        msg: dict[str, Any] = {"command": name}
        if arguments:
            msg["arguments"] = arguments
        reply = self._exchange(msg)
        if reply.get("return") != "OK":
            raise UnixSocketError(f"suricata {name}: {reply.get('message', reply)}")
        return reply.get("message")

    def _exchange(self, msg: dict[str, Any]) -> dict[str, Any]:
        if self._sock is None:
            raise UnixSocketError("not connected")
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
            decoder = json.JSONDecoder()
            while True:
                text = self._buf.decode("utf-8", "replace").lstrip()
                if text:
                    try:
                        obj, end = decoder.raw_decode(text)
                    except json.JSONDecodeError:
                        pass
                    else:
                        self._buf = text[end:].encode()
                        if not isinstance(obj, dict):
                            raise UnixSocketError(f"unexpected reply {obj!r}")
                        return obj
                chunk = self._sock.recv(65536)
                if not chunk:
                    raise UnixSocketError(f"{self.path} closed the connection")
                self._buf += chunk
        except OSError as exc:
            raise UnixSocketError(f"{self.path}: {exc}") from exc
