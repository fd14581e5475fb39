"""Open-loop, fixed-rate HTTP load generator and the latency arithmetic behind it.

Request ``i`` of a step is *scheduled* at ``t0 + i / rate`` whatever happened to the
requests before it, and its latency is measured from that scheduled time, not from the
moment it was actually sent. A server (or a generator) that falls behind therefore
shows its queueing in the figures instead of hiding it by slowing the offered load
down ("coordinated omission", Gil Tene, *How NOT to Measure Latency*, 2015). A step is
bounded: ``count`` requests, each with a timeout, and an in-flight cap beyond which a
due request is counted as an error without being sent; so it always ends by itself
within ``count / rate + timeout`` seconds.

:func:`run_step` is generic over the request function (unit-tested without sockets);
:func:`http_sender` is the aiohttp one the AI benchmark uses.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

#: A step passes (the system "sustains" its rate) with zero errors and p99 below this.
P99_LIMIT_MS = 100.0

# (request index) -> None on success, or a short error kind.
Sender = Callable[[int], Awaitable[str | None]]


def schedule(rate: float, count: int, t0: float = 0.0) -> list[float]:
    """Send times of a fixed-rate step: ``t0 + i / rate`` for ``i`` in ``range(count)``."""
    if rate <= 0 or count < 0:
        raise ValueError(f"schedule needs rate > 0 and count >= 0, got {rate}, {count}")
    return [t0 + i / rate for i in range(count)]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        return None
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass(frozen=True, slots=True)
class Sample:
    """One request: scheduled, actually sent and finished (seconds, one clock)."""

    scheduled: float
    sent: float
    done: float
    error: str | None = None

    @property
    def latency_ms(self) -> float:
        """From the *scheduled* send time: generator lag and server queueing included."""
        return (self.done - self.scheduled) * 1000.0

    @property
    def lag_ms(self) -> float:
        """How late the generator actually sent it."""
        return (self.sent - self.scheduled) * 1000.0


@dataclass(frozen=True, slots=True)
class Step:
    """Summary of one fixed-rate step against one system."""

    system: str
    mode: str
    rate: float
    count: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    lag_p99_ms: float | None
    achieved_rps: float
    error_kinds: dict[str, int] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Zero errors and p99 (from the scheduled time) under :data:`P99_LIMIT_MS`."""
        return (
            self.count > 0
            and self.errors == 0
            and self.p99_ms is not None
            and self.p99_ms < P99_LIMIT_MS
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "system": self.system,
            "mode": self.mode,
            "rate": self.rate,
            "count": self.count,
            "errors": self.errors,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "max_ms": self.max_ms,
            "lag_p99_ms": self.lag_p99_ms,
            "achieved_rps": self.achieved_rps,
            "error_kinds": self.error_kinds,
            "valid": self.passed,
        }


def summarize(system: str, mode: str, rate: float, samples: Sequence[Sample]) -> Step:
    """Latency percentiles over successful requests; every failure is an error."""
    ok = [s.latency_ms for s in samples if s.error is None]
    kinds: dict[str, int] = {}
    for s in samples:
        if s.error is not None:
            kinds[s.error] = kinds.get(s.error, 0) + 1
    span = (max(s.sent for s in samples) - min(s.scheduled for s in samples)) if samples else 0.0
    achieved = (len(samples) - 1) / span if len(samples) > 1 and span > 0 else 0.0
    return Step(
        system,
        mode,
        rate,
        len(samples),
        len(samples) - len(ok),
        percentile(ok, 50),
        percentile(ok, 99),
        max(ok) if ok else None,
        percentile([s.lag_ms for s in samples], 99),
        achieved,
        kinds,
    )


def sustained_rate(steps: Sequence[Step]) -> tuple[float, bool]:
    """The highest rate of an ascending ladder passed with every lower rate passed too,
    and whether that is only a lower bound (the top of the ladder passed). 0.0 when the
    lowest rate already failed."""
    best, ladder = 0.0, sorted(steps, key=lambda s: s.rate)
    for step in ladder:
        if not step.passed:
            return best, False
        best = step.rate
    return best, bool(ladder)


async def run_step(
    send: Sender,
    rate: float,
    count: int,
    *,
    max_in_flight: int = 2000,
    clock: Callable[[], float] = time.perf_counter,
) -> list[Sample]:
    """Issue ``count`` requests at ``rate`` per second, open loop; one sample each."""
    loop = asyncio.get_running_loop()
    samples: list[Sample | None] = [None] * count
    in_flight = 0

    async def one(i: int, due: float) -> None:
        nonlocal in_flight
        sent = clock()
        try:
            error = await send(i)
        except TimeoutError:  # asyncio's and aiohttp's timeouts (a subclass of OSError)
            error = "timeout"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            error = type(exc).__name__
        finally:
            in_flight -= 1
        samples[i] = Sample(due, sent, clock(), error)

    t0 = clock() + 0.005
    tasks = []
    for i, due in enumerate(schedule(rate, count, t0)):
        delay = due - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        if in_flight >= max_in_flight:
            now = clock()
            samples[i] = Sample(due, now, now, "in-flight cap")
            continue
        in_flight += 1
        tasks.append(loop.create_task(one(i, due)))
    if tasks:
        await asyncio.gather(*tasks)
    return [s for s in samples if s is not None]


def http_sender(
    session: aiohttp.ClientSession,
    url: str,
    bodies: Sequence[bytes],
    headers: dict[str, str],
    *,
    stream: bool,
    timeout_s: float,
) -> Sender:
    """POST ``bodies[i]``; success is HTTP 200 with a complete body (``[DONE]`` last for
    SSE, a ``choices`` field for JSON)."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def send(i: int) -> str | None:
        async with session.post(url, data=bodies[i], headers=headers, timeout=timeout) as resp:
            body = await resp.read()
            if resp.status != 200:
                return f"http {resp.status}"
        if stream:
            return None if body.rstrip().endswith(b"data: [DONE]") else "incomplete stream"
        return None if b'"choices"' in body else "no choices"

    return send
