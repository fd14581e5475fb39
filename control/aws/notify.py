"""Where leader-lease events go besides the log, the status and the counters.

:class:`Notifier` is the hook; :class:`SnsNotifier` publishes each event as JSON to an
SNS topic ("Publish", Amazon SNS API reference) through the operational role, on its own
worker thread so a slow or refused publish never delays a lease renewal;
:class:`MemoryNotifier` keeps them in a list (tests, the lab); :class:`NullNotifier` is
the one used when no topic is configured.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from control.aws.session import RoleInert, describe_error

log = logging.getLogger("spectra.aws")

EventKind = Literal[
    "acquired",
    "took_over",
    "took_back",
    "released",
    "lost",
    "resumed",
    "fallback_took",  # a leader took the routes of an AZ with no gateway (cross-AZ)
    "fallback_returned",  # ... and left them to that AZ's own leader again
    "takeover_failed",  # a leader's takeover stopped at a step (retried every period)
    "takeover_recovered",  # ... and a later run completed it
]


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    """A change of leadership seen by ``holder``: who had the lease, who has it now."""

    kind: EventKind
    key: str  # the lease key (the availability zone)
    holder: str  # the instance reporting the event
    previous: str | None  # the holder before (None: nobody)
    token: int  # the fencing token after the event
    at: float  # wall-clock epoch seconds
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Notifier(Protocol):
    """Receives every lease event; must not block the caller for long."""

    def notify(self, event: LeaseEvent) -> None: ...

    def status(self) -> dict[str, Any]: ...


class NullNotifier:
    """No notification target configured."""

    def notify(self, event: LeaseEvent) -> None:
        pass

    def status(self) -> dict[str, Any]:
        return {"target": None}


class MemoryNotifier:
    """Keeps every event in :attr:`events` (tests and the lab)."""

    def __init__(self) -> None:
        self.events: list[LeaseEvent] = []

    def notify(self, event: LeaseEvent) -> None:
        self.events.append(event)

    def status(self) -> dict[str, Any]:
        return {"target": "memory", "sent": len(self.events)}


class SnsNotifier:
    """Publishes events to ``topic_arn`` with a client from ``client`` (operational role).

    ``client`` is called on the worker thread for each publish, so an operational role
    that becomes usable later starts working without a restart; while it is inert, the
    status says why and the events are dropped (they are in the log and the status)."""

    def __init__(self, topic_arn: str, client: Callable[[], Any]) -> None:
        self.topic_arn = topic_arn
        self._client = client
        self._queue: queue.Queue[LeaseEvent | None] = queue.Queue(maxsize=1000)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.sent = 0
        self.failed = 0
        self.last_error: str | None = None

    def notify(self, event: LeaseEvent) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="spectra-sns-notify", daemon=True
                )
                self._thread.start()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.failed += 1
            self.last_error = "notification queue full: event dropped"

    def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every queued event was published or failed, then stop the worker."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout_s)

    close = flush

    def _run(self) -> None:
        while (event := self._queue.get()) is not None:
            self._publish(event)

    def _publish(self, event: LeaseEvent) -> None:
        try:
            self._client().publish(
                TopicArn=self.topic_arn,
                Subject=f"spectra leader {event.kind}: {event.key}"[:100],
                Message=json.dumps(event.as_dict(), sort_keys=True),
            )
        except RoleInert as exc:
            self.failed += 1
            self.last_error = f"inert: {exc.reason}"
        except (ClientError, BotoCoreError) as exc:
            self.failed += 1
            self.last_error = f"publish to {self.topic_arn}: {describe_error(exc)}"
            log.warning("lease event not published: %s", self.last_error)
        else:
            self.sent += 1
            self.last_error = None

    def status(self) -> dict[str, Any]:
        return {
            "target": self.topic_arn,
            "sent": self.sent,
            "failed": self.failed,
            "last_error": self.last_error,
        }
