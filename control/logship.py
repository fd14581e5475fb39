"""Shipping flow-log and firewall-log records to CloudWatch Logs and S3, off the writer.

A :class:`Shipper` is a bounded queue and a thread of its own: the record writer
(:class:`control.logfile.RecordLog`) hands it each JSON line with :meth:`Shipper.offer`,
which never blocks; a full queue counts the line in ``dropped``.  The thread moves lines
into each sink's pending list (bounded too: a destination that stays away for long counts
what no longer fits in that sink's ``dropped``) and sends when the sink is due:

* :class:`CloudWatchSink`: ``PutLogEvents`` to ``<group>`` / ``<instance>/<kind>``, the
  group and stream created when missing; batches of at most 10,000 events and 1,048,576
  bytes (each event's UTF-8 message plus 26 bytes) spanning at most 24 hours, events in
  time order ("PutLogEvents" in the Amazon CloudWatch Logs API reference); events the
  service refuses as too old or too new (``rejectedLogEventsInfo``) are counted in
  ``rejected``.
* :class:`S3Sink`: one gzip JSON-lines object every ``interval`` seconds or ``max_bytes``
  of lines, whichever comes first, under
  ``<prefix>/<kind>/<YYYY>/<MM>/<DD>/<instance>/<epoch ms>-<seq>.jsonl.gz``.

A failed send (throttling, AccessDenied, an endpoint that does not answer, no role) is
counted by its error code, the batch stays pending, and the sink waits with exponential
backoff (capped) before it tries again.  Clients are built in the shipping thread on first
use, so a slow STS or metadata service never blocks the agent loop or the writer.
"""

from __future__ import annotations

import gzip
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any, Protocol

from botocore.exceptions import ClientError

log = logging.getLogger("spectra.control")

CW_MAX_EVENTS = 10_000
CW_MAX_BYTES = 1_048_576
CW_EVENT_OVERHEAD = 26
CW_MAX_SPAN_MS = 24 * 3600 * 1000

Event = tuple[int, str]
"""(milliseconds since the epoch, JSON line without its newline)"""


def error_code(exc: Exception) -> str:
    """The AWS error code of ``exc`` (``ThrottlingException``, ``AccessDenied``, ...),
    or its class name for a transport error (``EndpointConnectionError``)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "ClientError"))
    return type(exc).__name__


class Sink(Protocol):
    name: str
    rejected: int

    def due(self, pending: list[Event], now: float) -> bool:
        """Whether ``pending`` should be sent now (monotonic ``now``)."""
        ...

    def send(self, pending: list[Event]) -> int:
        """Send a prefix of ``pending``; how many events it took. Raises on failure
        (nothing taken)."""
        ...


def rejected(info: dict[str, int], sent: int) -> int:
    """How many events of a batch of ``sent`` the service refused: those before
    ``tooOldLogEventEndIndex`` / ``expiredLogEventEndIndex`` (inclusive) and those from
    ``tooNewLogEventStartIndex`` on."""
    old = max(info.get("tooOldLogEventEndIndex", -1), info.get("expiredLogEventEndIndex", -1))
    new = info.get("tooNewLogEventStartIndex", sent)
    return min(sent, old + 1 + max(sent - new, 0))


class CloudWatchSink:
    """``PutLogEvents`` to one group and stream, both created when missing."""

    def __init__(self, client: Callable[[], Any], group: str, stream: str) -> None:
        self.name = "cloudwatch"
        self.rejected = 0
        self._client = client
        self.group, self.stream = group, stream
        self._ready = False

    def due(self, pending: list[Event], now: float) -> bool:
        return bool(pending)

    def _create(self, c: Any) -> None:
        for call, kwargs in (
            (c.create_log_group, {"logGroupName": self.group}),
            (c.create_log_stream, {"logGroupName": self.group, "logStreamName": self.stream}),
        ):
            try:
                call(**kwargs)
            except ClientError as exc:
                # an existing group or stream is what we want; a group made by the stack
                # (the role may not create groups) is used as it is
                code = error_code(exc)
                if code == "ResourceAlreadyExistsException":
                    continue
                if code.startswith("AccessDenied") and call == c.create_log_group:
                    continue
                raise
        self._ready = True

    def send(self, pending: list[Event]) -> int:
        c = self._client()
        if not self._ready:
            self._create(c)
        batch: list[dict[str, Any]] = []
        size = 0
        for ts, line in pending[:CW_MAX_EVENTS]:
            n = len(line.encode()) + CW_EVENT_OVERHEAD
            if batch and (size + n > CW_MAX_BYTES or ts - batch[0]["timestamp"] > CW_MAX_SPAN_MS):
                break
            batch.append({"timestamp": ts, "message": line})
            size += n
        try:
            answer = c.put_log_events(
                logGroupName=self.group, logStreamName=self.stream, logEvents=batch
            )
        except ClientError as exc:
            if error_code(exc) == "ResourceNotFoundException":
                self._ready = False  # deleted under us: create again on the retry
            raise
        self.rejected += rejected(answer.get("rejectedLogEventsInfo") or {}, len(batch))
        return len(batch)


class S3Sink:
    """One gzip JSON-lines object per ``interval`` seconds or ``max_bytes`` of lines."""

    def __init__(
        self,
        client: Callable[[], Any],
        bucket: str,
        prefix: str,
        instance: str,
        *,
        interval: float,
        max_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = "s3"
        self.rejected = 0
        self._client = client
        self.bucket, self.prefix, self.instance = bucket, prefix.strip("/"), instance
        self.interval, self.max_bytes = interval, max_bytes
        self._since: float | None = None
        self._bytes = 0
        self._counted = 0
        self._seq = 0
        self._clock = clock

    def due(self, pending: list[Event], now: float) -> bool:
        if not pending:
            self._since, self._bytes, self._counted = None, 0, 0
            return False
        if self._since is None:
            self._since = now
        for _, line in pending[self._counted :]:
            self._bytes += len(line.encode()) + 1
        self._counted = len(pending)
        return now - self._since >= self.interval or self._bytes >= self.max_bytes

    def key(self, first_ms: int) -> str:
        day = datetime.fromtimestamp(first_ms / 1000, UTC).strftime("%Y/%m/%d")
        self._seq += 1
        return f"{self.prefix}/{day}/{self.instance}/{first_ms}-{self._seq:06d}.jsonl.gz"

    def send(self, pending: list[Event]) -> int:
        body = gzip.compress("".join(line + "\n" for _, line in pending).encode())
        key = self.key(pending[0][0])
        self._client().put_object(
            Bucket=self.bucket, Key=key, Body=body,
            ContentType="application/x-ndjson", ContentEncoding="gzip",
        )  # fmt: skip
        self._since, self._bytes, self._counted = None, 0, 0
        return len(pending)


class _Lane:
    """One sink's pending events, counters and backoff."""

    def __init__(self, sink: Sink, capacity: int) -> None:
        self.sink = sink
        self.capacity = capacity
        self.pending: list[Event] = []
        self.shipped = 0
        self.dropped = 0
        self.retries = 0
        self.errors: dict[str, int] = {}
        self.last_error = ""
        self.failures = 0  # consecutive
        self.next_try = 0.0

    def counters(self) -> dict[str, Any]:
        return {
            "shipped": self.shipped,
            "rejected": self.sink.rejected,
            "pending": len(self.pending),
            "dropped": self.dropped,
            "retries": self.retries,
            "errors": dict(self.errors),
            "last_error": self.last_error,
        }


class Shipper:
    """A bounded queue of lines and the thread sending them to its sinks."""

    def __init__(
        self,
        sinks: list[Sink],
        *,
        capacity: int,
        name: str,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        tick: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=capacity)
        self._lanes = [_Lane(s, capacity) for s in sinks]
        self.dropped = 0
        self._backoff, self._backoff_max, self._tick = backoff, backoff_max, tick
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, line: str, ts_ms: int | None = None) -> bool:
        """Queue ``line`` (False, and counted in ``dropped``, when the queue is full)."""
        ts = time.time_ns() // 1_000_000 if ts_ms is None else ts_ms
        try:
            self._queue.put_nowait((ts, line))
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _drain(self, wait: float) -> None:
        try:
            items = [self._queue.get(timeout=max(wait, 0.001))]
        except queue.Empty:
            return
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for lane in self._lanes:
            room = lane.capacity - len(lane.pending)
            if room < len(items):
                lane.dropped += len(items) - max(room, 0)
            fresh = items[: max(room, 0)]
            ordered = all(a[0] <= b[0] for a, b in pairwise(fresh))
            in_order = ordered and (
                not lane.pending or not fresh or lane.pending[-1][0] <= fresh[0][0]
            )
            lane.pending.extend(fresh)
            if not in_order:  # a wall clock stepped back: sort (stable, same-ms keep order)
                lane.pending.sort(key=lambda e: e[0])

    def _ship(self, lane: _Lane, final: bool) -> None:
        while lane.pending:
            now = self._clock()
            if now < lane.next_try and not final:
                return
            if not final and not lane.sink.due(lane.pending, now):
                return
            try:
                taken = lane.sink.send(lane.pending)
            except Exception as exc:  # any failure (RoleInert, ImdsError, botocore) is counted
                code = error_code(exc)
                lane.errors[code] = lane.errors.get(code, 0) + 1
                lane.last_error = f"{code}: {exc}"
                lane.failures += 1
                lane.retries += 1
                delay = min(self._backoff * 2 ** (lane.failures - 1), self._backoff_max)
                lane.next_try = self._clock() + delay
                log.warning(
                    "shipping to %s failed (%s); retry in %.1fs", lane.sink.name, code, delay
                )
                return
            lane.failures = 0
            lane.shipped += taken
            del lane.pending[:taken]

    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain(self._tick)
            for lane in self._lanes:
                self._ship(lane, final=False)
        self._drain(0.0)
        for lane in self._lanes:  # one last try each at stop, no waiting
            if lane.pending:
                lane.next_try = 0.0
                self._ship(lane, final=True)

    def stop(self, timeout: float = 2.0) -> None:
        """Send what is queued (one try per sink), then end the thread; waits at most
        ``timeout`` (the step stops loggers on the agent loop): a send still under way
        finishes in the background."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def counters(self) -> dict[str, Any]:
        out: dict[str, Any] = {"queued": self._queue.qsize(), "dropped": self.dropped}
        for lane in self._lanes:
            out[lane.sink.name] = lane.counters()
        return out
