"""A JSON-lines log file with size-based rotation, written by its own thread from a
bounded queue: what the flow log and the firewall log share.

Producers do not block by default: :meth:`RecordLog.offer` puts a record on the queue or,
when the queue is full (the disk is slower than the flows end), counts it in ``dropped``
(a producer with somewhere else to wait -- the reliable flow log, whose kernel keeps the
undelivered events -- may wait a bounded time for room first); a
failed write (disk full, directory gone) is counted in ``write_errors`` with its
records in ``dropped``.  Nothing is lost without a counter saying so.  Rotation follows
logrotate's numbering: ``x.jsonl`` -> ``x.jsonl.1`` -> ... -> ``x.jsonl.<keep>``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    from control.logship import Shipper

log = logging.getLogger("spectra.control")

STOP = object()
NETLINK_TABLE = Path("/proc/thread-self/net/netlink")  # the reading thread's namespace


@dataclass(frozen=True, slots=True)
class Rotation:
    """Where records go and when the file is rotated."""

    path: Path
    max_bytes: int
    keep: int


class RotatingFile:
    """Appends lines to ``rotation.path``; rotates once it passes ``max_bytes``. A batch
    is written whole or not at all: a write that fails part-way (a full disk) is cut
    back to where the batch started, so no partial line is left for the next batch to
    run into."""

    def __init__(self, rotation: Rotation) -> None:
        self.rotation = rotation
        self.rotations = 0
        self._file: BinaryIO | None = None
        self._size = 0

    def _open(self) -> BinaryIO:
        if self._file is None:
            self.rotation.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.rotation.path.open("ab", buffering=0)  # no buffer to flush
            self._size = self._file.seek(0, os.SEEK_END)
        return self._file

    def write(self, lines: list[str]) -> None:
        f = self._open()
        data = memoryview("".join(lines).encode())
        start, size = self._size, len(data)
        try:
            while data:
                data = data[f.write(data) or 0 :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(f.fileno(), start)
            self.close()
            raise
        self._size = start + size
        if self._size >= self.rotation.max_bytes:
            self.rotate()

    def rotate(self) -> None:
        self.close()
        path, keep = self.rotation.path, self.rotation.keep
        for i in range(keep - 1, 0, -1):
            older = path.with_name(f"{path.name}.{i}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{i + 1}"))
        if path.exists():
            path.replace(path.with_name(f"{path.name}.1"))
        self.rotations += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class RecordLog:
    """A bounded queue of records and the thread writing them as JSON lines."""

    def __init__(
        self, rotation: Rotation, capacity: int, name: str, ship: Shipper | None = None
    ) -> None:
        self.file = RotatingFile(rotation)
        self.ship = ship  # also hands each line to the shipper (CloudWatch Logs, S3)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=capacity)
        self.written = 0
        self.dropped = 0
        self.write_errors = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        if self.ship is not None:
            self.ship.start()
        self._thread.start()

    def offer(self, record: dict[str, Any], wait: float = 0.0) -> bool:
        """Queue ``record``, waiting up to ``wait`` seconds for room; False (and counted)
        when the queue stayed full."""
        try:
            if wait > 0:
                self._queue.put(record, timeout=wait)
            else:
                self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            batch = [item]
            while len(batch) < 1024:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            done = any(r is STOP for r in batch)
            records = [r for r in batch if r is not STOP]
            self._write(records)
            if done:
                self.file.close()
                return

    def _write(self, records: list[object]) -> None:
        if not records:
            return
        lines = [json.dumps(r, separators=(",", ":")) + "\n" for r in records]
        if self.ship is not None:
            for line in lines:  # never blocks: a full shipping queue counts the line
                self.ship.offer(line[:-1])
        try:
            self.file.write(lines)
        except OSError as exc:
            self.write_errors += 1
            self.dropped += len(records)
            self.file.close()
            path = self.file.rotation.path
            log.warning("%s: %d records not written: %s", path, len(records), exc)
            return
        self.written += len(records)

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is queued, then end the thread."""
        if not self._thread.is_alive():
            return
        try:
            self._queue.put(STOP, timeout=timeout)
        except queue.Full:
            log.warning("%s: writer stuck; stopping without it", self.file.rotation.path)
        else:
            self._thread.join(timeout)
        if self.ship is not None:
            self.ship.stop()

    def counters(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "written": self.written,
            "dropped": self.dropped,
            "write_errors": self.write_errors,
            "rotations": self.file.rotations,
            "queued": self._queue.qsize(),
        }
        if self.ship is not None:
            out["shipping"] = self.ship.counters()
        return out


class Feed:
    """A late-bound hand-over to a :class:`RecordLog`, for producers that live in
    other steps (the inspection step's alert tail) and feed the alert/firewall stream:
    while no log is connected (``target`` None: the stream is off) an offered record
    goes nowhere; a connected log queues it like its own (a full queue counts it)."""

    def __init__(self) -> None:
        self.target: RecordLog | None = None

    def offer(self, record: dict[str, Any]) -> bool:
        target = self.target
        return target.offer(record) if target is not None else False


def netlink_drops(sock: socket.socket, table: Path = NETLINK_TABLE) -> int | None:
    """The kernel's count of messages it could not queue to ``sock`` (``sk_drops``,
    raised once per undelivered message: the ``Drops`` column of ``/proc/net/netlink``,
    found by the socket's inode); None when the table has no such row or cannot be read."""
    inode = os.fstat(sock.fileno()).st_ino
    try:
        lines = table.read_text().splitlines()
    except OSError:
        return None
    header = lines[0].split() if lines else []
    if "Drops" not in header or "Inode" not in header:
        return None
    drops, at = header.index("Drops"), header.index("Inode")
    for line in lines[1:]:
        cols = line.split()
        if len(cols) == len(header) and cols[at] == str(inode):
            return int(cols[drops])
    return None


class NetlinkLogger:
    """A netlink socket read by its own thread into a :class:`RecordLog`: the shape the
    flow log and the firewall log share. Subclasses turn one datagram into records
    (:meth:`ingest`); a receive-buffer overflow (ENOBUFS) is counted, never fatal, and
    :meth:`kernel_drops` says how many messages the kernel could not queue."""

    def __init__(self, sock: socket.socket, out: RecordLog, name: str) -> None:
        self.out = out
        self.kernel_overflows = 0
        self.reader_error: str | None = None
        self._stop = threading.Event()
        self._sock = sock
        self._drops_at_start = netlink_drops(sock)
        self._drops_last = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.out.start()
        self._thread.start()

    def ingest(self, data: bytes, now_ns: int) -> None:
        raise NotImplementedError

    def idle(self, now_ns: int) -> None:
        """Called when the socket was quiet for its timeout (nothing by default)."""

    def _run(self) -> None:
        try:
            self._read()
        except Exception as exc:  # reported in the counters (reader_error)
            # a reader that died must not keep its socket: a reliable one would hold the
            # kernel's undelivered events (and their conntrack entries) for ever
            log.exception("%s: reading thread ended; socket closed", self._thread.name)
            self.reader_error = f"{type(exc).__name__}: {exc}"
            self.kernel_drops()
            self._sock.close()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(1 << 16)
            except TimeoutError:
                self.idle(time.time_ns())
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.kernel_overflows += 1
                    continue
                if self._stop.is_set():
                    return
                raise
            self.ingest(data, time.time_ns())

    def kernel_drops(self) -> int | None:
        """Messages the kernel could not queue to the socket since it was opened (None:
        not readable here); the last value read once the socket is closed."""
        if self._drops_at_start is None:
            return None
        if self._sock.fileno() >= 0:
            now = netlink_drops(self._sock)
            if now is not None:
                self._drops_last = now - self._drops_at_start
        return self._drops_last

    def stop_reading(self) -> None:
        """End the reading thread and close the socket (the record log goes on)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        self.kernel_drops()  # the last count, while the socket still exists
        self._sock.close()

    def stop(self) -> None:
        self.stop_reading()
        self.out.stop()
