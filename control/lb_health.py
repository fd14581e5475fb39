"""Health checks of the L4 load balancer's backends, off the agent's loop.

:func:`probe` is one check: a TCP connect, or an HTTP/1.1 ``GET`` (RFC 9110) answered
2xx or 3xx, bounded by the check's timeout. :func:`observe` is the hysteresis: a
backend's first result decides its state; after that ``fall`` failures in a row take it
out and ``rise`` successes in a row bring it back. While a result disagrees with the
state (a change under way), the next probe comes after half an interval (HAProxy's
``fastinter`` idea), so a dead backend is out within 1.5 intervals plus a timeout.

:class:`HealthMonitor` runs the probes in a small thread pool, scheduled by a thread of
its own, and reads target groups the same way; the agent's loop only ever reads its
state. A listener whose healthy set changed is handed to ``on_change`` from the
monitor's thread (the step turns it into one nft transaction).
"""

from __future__ import annotations

import http.client
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from control.lb import Check, Target, VirtualService

log = logging.getLogger("spectra.control")

TICK_SECONDS = 0.05
WORKERS = 8


def probe(target: Target, check: Check) -> str | None:
    """``None`` when ``target`` passes ``check``, else what failed."""
    port = check.port or target.port
    try:
        if check.protocol == "tcp":
            with socket.create_connection((target.address, port), timeout=check.timeout):
                return None
        conn = http.client.HTTPConnection(target.address, port, timeout=check.timeout)
        try:
            conn.request("GET", check.path, headers={"User-Agent": "spectra-lb-check"})
            status = conn.getresponse().status
        finally:
            conn.close()
    except (OSError, http.client.HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if 200 <= status < 400 else f"HTTP {status}"


@dataclass(slots=True)
class Health:
    """What the monitor knows of one backend."""

    healthy: bool | None = None  # None: not probed yet (kept in the map meanwhile)
    successes: int = 0  # in a row
    failures: int = 0  # in a row
    checks: int = 0
    last_error: str | None = None
    next_at: float = 0.0
    in_flight: bool = False

    def as_dict(self) -> dict[str, Any]:
        state = {None: "unknown", True: "healthy", False: "unhealthy"}[self.healthy]
        return {"state": state, "checks": self.checks, "last_error": self.last_error}


def observe(health: Health, error: str | None, check: Check) -> bool:
    """Record one probe result; ``True`` when the backend's state changed."""
    health.checks += 1
    health.last_error = error
    if error is None:
        health.successes, health.failures = health.successes + 1, 0
        if health.healthy is None or (not health.healthy and health.successes >= check.rise):
            health.healthy = True
            return True
    else:
        health.failures, health.successes = health.failures + 1, 0
        if health.healthy is None or (health.healthy and health.failures >= check.fall):
            health.healthy = False
            return True
    return False


def _pending(health: Health, error: str | None) -> bool:
    """A change is under way: the result disagrees with the state."""
    return health.healthy is not None and health.healthy != (error is None)


@dataclass(slots=True)
class _Service:
    vs: VirtualService
    extra: tuple[Target, ...] = ()  # from the target group
    synced_at: float | None = None
    sync_error: str | None = None
    syncing: bool = False
    next_sync: float = 0.0
    health: dict[Target, Health] = field(default_factory=dict)

    def targets(self) -> tuple[Target, ...]:
        return tuple(dict.fromkeys((*self.vs.backends, *self.extra)))


Sync = Callable[[str], tuple[Target, ...]]  # target group ARN -> its healthy targets


class HealthMonitor:
    """Probes every backend of every virtual service, and syncs target groups."""

    def __init__(self, on_change: Callable[[int], None], sync_seconds: float = 10.0) -> None:
        self.on_change = on_change
        self.sync: Sync | None = None
        self.sync_seconds = sync_seconds
        self._lock = threading.Lock()
        self._services: dict[int, _Service] = {}
        self._dirty: set[int] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="spectra-lb-check")
        self._thread: threading.Thread | None = None

    # -- what the step asks ------------------------------------------------------------

    def configure(self, services: Sequence[VirtualService], sync_seconds: float) -> None:
        """Check ``services`` from now on; backends that stay keep their state."""
        with self._lock:
            old = self._services
            self._services = {}
            for vs in services:
                prev = old.get(vs.index)
                svc = _Service(vs)
                if prev is not None and prev.vs.target_group_arn == vs.target_group_arn:
                    svc.extra, svc.synced_at = prev.extra, prev.synced_at
                    svc.next_sync = prev.next_sync if prev.vs.check == vs.check else 0.0
                keep = prev.health if prev is not None and prev.vs.check == vs.check else {}
                svc.health = {t: keep.get(t, Health()) for t in svc.targets()}
                self._services[vs.index] = svc
            self.sync_seconds = sync_seconds
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="spectra-lb", daemon=True)
            self._thread.start()
        self._wake.set()

    def healthy(self, index: int) -> list[Target]:
        """The targets of service ``index`` that may take new connections."""
        with self._lock:
            svc = self._services.get(index)
            if svc is None:
                return []
            return [t for t in svc.targets() if svc.health[t].healthy is not False]

    def status(self) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {}
            for svc in self._services.values():
                vs = svc.vs
                entry: dict[str, Any] = {
                    "address": list(vs.addresses), "proto": vs.proto, "port": vs.port,
                    "backends": {t.key: {**svc.health[t].as_dict(), "weight": t.weight,
                                         "source": "document" if t in vs.backends
                                         else "target_group"}
                                 for t in svc.targets()},
                }  # fmt: skip
                if vs.target_group_arn is not None:
                    entry["target_group"] = {"arn": vs.target_group_arn,
                                             "synced_at": svc.synced_at,
                                             "error": svc.sync_error}  # fmt: skip
                out[vs.name] = entry
            return out

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        # probes in flight end within their timeout; waiting for them closes their sockets
        self._pool.shutdown(wait=True, cancel_futures=True)

    # -- the monitor's thread ----------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._schedule(time.monotonic())
            with self._lock:
                dirty, self._dirty = self._dirty, set()
            for index in sorted(dirty):
                try:
                    self.on_change(index)
                except Exception:  # the next change retries; the monitor must go on
                    log.exception("load balancer map update of listener %d failed", index)
                    with self._lock:
                        self._dirty.add(index)
            self._wake.wait(TICK_SECONDS)
            self._wake.clear()

    def _schedule(self, now: float) -> None:
        """Submit what is due; outside the lock, since a future that is already done
        runs its callback (which takes the lock) in this thread."""
        probes, syncs = [], []
        with self._lock:
            for svc in self._services.values():
                for target, health in svc.health.items():
                    if not health.in_flight and now >= health.next_at:
                        health.in_flight = True
                        probes.append((svc.vs.index, target, svc.vs.check))
                arn = svc.vs.target_group_arn
                if arn and self.sync is not None and not svc.syncing and now >= svc.next_sync:
                    svc.syncing = True
                    syncs.append((svc.vs.index, self.sync, arn))
        for index, target, check in probes:
            self._submit(index, target, check)
        for index, sync, arn in syncs:
            self._pool.submit(sync, arn).add_done_callback(partial(self._synced, index))

    def _submit(self, index: int, target: Target, check: Check) -> None:
        future = self._pool.submit(probe, target, check)
        future.add_done_callback(lambda f: self._probed(index, target, check, f))

    def _probed(self, index: int, target: Target, check: Check, f: Future[str | None]) -> None:
        error = f.result() if not f.cancelled() and f.exception() is None else "not run"
        with self._lock:
            svc = self._services.get(index)
            health = svc.health.get(target) if svc is not None and svc.vs.check == check else None
            if health is None:  # reconfigured meanwhile
                return
            health.in_flight = False
            changed = observe(health, error, check)
            pending = not changed and _pending(health, error)
            if changed:
                self._dirty.add(index)
                log.info("load balancer %s backend %s is %s%s", svc.vs.name if svc else index,
                         target.key, "healthy" if health.healthy else "unhealthy",
                         f" ({error})" if error else "")  # fmt: skip
            now = time.monotonic()
            health.next_at = now + (check.interval / 2 if pending else check.interval)
        self._wake.set()

    def _synced(self, index: int, f: Future[tuple[Target, ...]]) -> None:
        with self._lock:
            svc = self._services.get(index)
            if svc is None:
                return
            svc.syncing = False
            svc.next_sync = time.monotonic() + self.sync_seconds
            exc = f.exception() if not f.cancelled() else None
            if f.cancelled() or exc is not None:
                svc.sync_error = str(exc) if exc else "cancelled"
                log.error("target group %s not read: %s", svc.vs.target_group_arn, exc)
                return
            svc.sync_error, svc.synced_at = None, time.time()
            extra = f.result()
            if extra == svc.extra:
                return
            svc.extra = extra
            svc.health = {t: svc.health.get(t, Health()) for t in svc.targets()}
            self._dirty.add(index)
        self._wake.set()
