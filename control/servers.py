"""The HTTP servers of ``spectra run`` (config API :8080, AI gateway :8090) on one event
loop in a background thread, beside the synchronous agent loop.

The config API is required (its failure stops ``spectra run``); a server that belongs
to one section of the document (the AI gateway: ``ai``) may fail on its own: the failure
is kept in :attr:`ServerThread.failures` under the document field it comes from, which
the agent reports in its status, and everything else keeps running."""

from __future__ import annotations

import asyncio
import contextlib
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
    section: str | None = None  # its document section; None: required by spectra run


class SectionError(Exception):
    """A section of the document cannot take effect; ``field`` names where."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ServerThread:
    """Starts every server, reports bind failures at start, stops them cleanly."""

    def __init__(self, servers: list[HttpServer]) -> None:
        self.servers = servers
        self._loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.failures: dict[str, str] = {}  # document field -> why its server is not up
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
            if server.section is None:
                await self._serve(server)
                continue
            try:
                await self._serve(server)
            except Exception as exc:  # one section's server: reported, the rest runs
                field = exc.field if isinstance(exc, SectionError) else server.section
                message = str(exc) if isinstance(exc, SectionError) else f"{field}: {exc}"
                self.failures[field] = f"{message} ({server.name} not serving)"
                log.error("%s not started: %s", server.name, message)

    async def _serve(self, server: HttpServer) -> None:
        runner = web.AppRunner(server.factory(), access_log=None)
        try:
            await runner.setup()
            await web.TCPSite(runner, server.host, server.port).start()
        except BaseException:
            with contextlib.suppress(Exception):  # what setup opened before it failed
                await runner.cleanup()
            raise
        self._runners.append(runner)
        log.info("%s listening on %s:%d", server.name, server.host, server.port)

    async def _cleanup(self) -> None:
        for runner in reversed(self._runners):
            await runner.cleanup()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
