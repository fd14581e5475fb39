"""Squid's JSON access log into the product's log shipping: a thread that follows the
file Squid writes and hands each complete line to a :class:`control.logship.Shipper`.

Squid writes the file itself (it outlives the agent, so nothing is lost while the
agent restarts) and rotates it on ``squid -k rotate`` (renamed to ``.0``, a new file
opened). The follower reads new complete lines every ``poll`` seconds; when the path
names another inode (rotated) it reads the old file to its end first, then follows the
new one from its start; a file shorter than the position read (truncated) is read from
its start. A follower started on an existing file begins at its end: lines written
while no agent ran stay in the local file only.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import IO, Any

from control.logship import Shipper

log = logging.getLogger("spectra.control")


class AccessLogFollower:
    """Follows ``path`` and offers each line to ``ship``."""

    def __init__(self, path: Path, ship: Shipper, poll: float = 0.5) -> None:
        self.path, self.ship, self.poll = path, ship, poll
        self.lines = 0
        self.rotations = 0
        self._file: IO[bytes] | None = None
        self._partial = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spectra-proxy-log", daemon=True)

    def start(self) -> None:
        self._open(at_end=True)
        self.ship.start()
        self._thread.start()

    def _open(self, at_end: bool) -> None:
        try:
            self._file = self.path.open("rb")
        except OSError:
            self._file = None
            return
        if at_end:
            self._file.seek(0, os.SEEK_END)
        self._partial = b""

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.step()
            except OSError as exc:  # the file went away for a moment: try again
                log.warning("proxy access log %s: %s", self.path, exc)

    def step(self) -> None:
        """Read what is new; follow a rotation or truncation (also called by tests)."""
        if self._file is None:
            self._open(at_end=False)
            if self._file is None:
                return
        self._read()
        try:
            current = self.path.stat()
        except FileNotFoundError:
            return  # between Squid's rename and its new file
        mine = os.fstat(self._file.fileno())
        if current.st_ino != mine.st_ino:
            self._read()  # what Squid wrote to the old file before it let go
            self._file.close()
            self.rotations += 1
            self._open(at_end=False)
            self._read()
        elif current.st_size < self._file.tell():
            self._file.seek(0)
            self._partial = b""
            self._read()

    def _read(self) -> None:
        assert self._file is not None
        data = self._partial + self._file.read()
        *complete, self._partial = data.split(b"\n")
        for line in complete:
            if line.strip():
                self.lines += 1
                self.ship.offer(line.decode("utf-8", "replace"))

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.poll + 2)
        if self._file is not None:
            self._file.close()
        self.ship.stop()

    def counters(self) -> dict[str, Any]:
        return {"lines": self.lines, "rotations": self.rotations, **self.ship.counters()}
