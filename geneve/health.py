"""GWLB health-check responder: answers the target group's TCP or HTTP health checks
on a configurable port (https://docs.aws.amazon.com/elasticloadbalancing/latest/gateway/health-checks.html).

A TCP check succeeds on connect; an HTTP check gets ``200 OK`` while ``healthy()``
returns True and ``503`` otherwise, so the agent can take the appliance out of
rotation (data plane down, draining) without closing the port; with ``path`` set (the
target group's health-check path, ``gwlb.health_check.path``) any other path gets
``404``, so a target group probing the wrong path sees the target unhealthy instead of
a false success.  asyncio only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger("spectra.geneve")

_MAX_REQUEST = 8192


class HealthResponder:
    """``await start()`` / ``await stop()``; ``port`` is the bound port (0 picks one)."""

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 8081,
        healthy: Callable[[], bool] = lambda: True,
        path: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.healthy = healthy
        self.path = path
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("GWLB health responder on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            head = b""  # a TCP check: connect and close
        try:
            if head[:4] in (b"GET ", b"HEAD"):
                target = head.split(b" ", 2)[1].split(b"?", 1)[0] if head.count(b" ") > 1 else b""
                ok = self.healthy()
                body = b"ok\n" if ok else b"unhealthy\n"
                status = b"200 OK" if ok else b"503 Service Unavailable"
                if self.path is not None and target != self.path.encode():
                    body, status = b"not found\n", b"404 Not Found"
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: " + str(len(body)).encode() + b"\r\n"
                    b"Connection: close\r\n\r\n" + (b"" if head.startswith(b"HEAD") else body)
                )
                await writer.drain()
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def serve_forever(host: str, port: int) -> None:
    """Run a responder until cancelled (``python -m geneve.health HOST PORT``)."""

    async def main() -> None:
        responder = HealthResponder(host, port)
        await responder.start()
        await asyncio.Event().wait()

    asyncio.run(main())


if __name__ == "__main__":
    import sys

    serve_forever(sys.argv[1], int(sys.argv[2]))
