"""The HTTP servers of ``spectra run`` (config API :8080, AI gateway :8090) on one event
loop in a background thread, beside the synchronous agent loop."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

log = logging.getLogger("spectra.control")


@dataclass(frozen=True, slots=True)
class HttpServer:
    """One aiohttp application and where it listens."""

    name: str
    factory: Callable[[], web.Application]
    host: str
    port: int


class ServerThread:
    """Starts every server, reports bind failures at start, stops them cleanly."""

    def __init__(self, servers: list[HttpServer]) -> None:
        self.servers = servers
        self._loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="spectra-servers", daemon=True)

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("HTTP servers did not start in time")
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:  # reported to start()'s caller
            self._error = exc
            self._loop.run_until_complete(self._cleanup())
            self._loop.close()
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._cleanup())
        self._loop.close()

    async def _start(self) -> None:
        for server in self.servers:
            runner = web.AppRunner(server.factory(), access_log=None)
            await runner.setup()
            self._runners.append(runner)
            await web.TCPSite(runner, server.host, server.port).start()
            log.info("%s listening on %s:%d", server.name, server.host, server.port)

    async def _cleanup(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
