"""AWS credentials for SigV4-signing providers (Bedrock), cached and refreshed on a
worker thread before they expire, so a request never waits for STS or IMDS.

botocore's :class:`~botocore.credentials.RefreshableCredentials` refresh inside
``get_frozen_credentials()``: whoever asks when the keys are within the refresh window
(15 minutes before expiry advisory, 10 mandatory; "Credentials" in the boto3 guide) makes
the STS AssumeRole or IMDS call and waits for it.  :class:`RefreshingCredentials` wraps an
:class:`~ai.providers.base.AwsCredentialSource` (the appliance's session factory, or
botocore's default chain) and keeps the frozen keys with their expiry:

* a request signs with the held keys at once; when fewer than ``refresh_before_s``
  (5 minutes) are left it starts one refresh on a worker thread and signs with the held
  keys meanwhile;
* only when nothing usable is held (the first request, or the held keys expired) does a
  request wait, off the event loop and at most ``timeout_s``;
* a failed refresh keeps the held keys until they expire; it is counted, logged with
  the reason and shown in :meth:`RefreshingCredentials.status`, and retried after
  ``retry_s``; with nothing usable held, requests in that pause fail at once with the
  reason.  Keys without an expiry (static keys) are never refreshed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.credentials import Credentials as BotocoreCredentials
from botocore.credentials import ReadOnlyCredentials

from ai.providers.base import AwsCredentialSource

log = logging.getLogger("spectra.ai")

REFRESH_BEFORE_S = 300.0
TIMEOUT_S = 10.0
RETRY_S = 30.0


class CredentialsUnavailable(Exception):
    """No usable AWS credentials: none resolved in time, or the held ones expired."""


@dataclass(frozen=True, slots=True)
class _Held:
    """Static keys copied from the source and when they expire (``None``: never)."""

    keys: BotocoreCredentials
    expires: datetime | None


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _expiry(found: BotocoreCredentials) -> datetime | None:
    """The expiry botocore keeps on refreshable credentials (no public accessor; plain
    :class:`~botocore.credentials.Credentials` have none)."""
    value: Any = getattr(found, "_expiry_time", None)
    return value if isinstance(value, datetime) else None


def _consume(future: asyncio.Future[_Held]) -> None:
    """Retrieve a result nobody awaits any more (a request that timed out)."""
    if not future.cancelled():
        future.exception()


class RefreshingCredentials:
    """An :class:`~ai.providers.base.AwsCredentialSource` whose keys are resolved and
    refreshed on a worker thread (see the module doc); ``now`` is the clock compared with
    the expiry (tests move it)."""

    def __init__(
        self,
        source: AwsCredentialSource,
        *,
        name: str = "aws",
        refresh_before_s: float = REFRESH_BEFORE_S,
        timeout_s: float = TIMEOUT_S,
        retry_s: float = RETRY_S,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self._source = source
        self.name = name
        self._refresh_before = timedelta(seconds=refresh_before_s)
        self._timeout_s = timeout_s
        self._retry = timedelta(seconds=retry_s)
        self._now = now
        self._lock = threading.Lock()
        self._held: _Held | None = None
        self._inflight: Future[_Held] | None = None
        self._retry_at: datetime | None = None
        self._refreshes = 0
        self._failures = 0
        self._last_error: str | None = None

    async def current(self) -> BotocoreCredentials:
        """The keys to sign with now; waits (off the loop, ``timeout_s`` at most) only
        when nothing usable is held.  Raises :class:`CredentialsUnavailable`."""
        held = self._usable()
        if held is not None:
            return held.keys
        self._refuse_while_paused()
        waiting = asyncio.wrap_future(self._start())
        waiting.add_done_callback(_consume)
        done, _ = await asyncio.wait({waiting}, timeout=self._timeout_s)
        if not done:
            raise CredentialsUnavailable(
                f"{self.name} credentials not resolved within {self._timeout_s:g} s"
            )
        try:
            return waiting.result().keys
        except Exception as exc:
            raise CredentialsUnavailable(f"{self.name} credentials: {_describe(exc)}") from None

    def __call__(self) -> BotocoreCredentials:
        """The held keys as botocore credentials (the :class:`AwsCredentialSource` form;
        blocks up to ``timeout_s`` when nothing usable is held: call it off the loop)."""
        held = self._usable()
        if held is None:
            self._refuse_while_paused()
            future = self._start()
            try:
                held = future.result(timeout=self._timeout_s)
            except Exception as exc:
                if not future.done():
                    raise CredentialsUnavailable(
                        f"{self.name} credentials not resolved within {self._timeout_s:g} s"
                    ) from None
                raise CredentialsUnavailable(f"{self.name} credentials: {_describe(exc)}") from None
        return held.keys

    def status(self) -> dict[str, Any]:
        """What is held, until when, and how refreshes went (never the keys)."""
        now = self._now()
        with self._lock:
            held = self._held
            out: dict[str, Any] = {
                "source": self.name,
                "refreshes": self._refreshes,
                "failures": self._failures,
                "last_error": self._last_error,
                "refreshing": self._inflight is not None,
            }
        if held is None:
            out.update(state="none", expires=None)
        elif held.expires is None:
            out.update(state="static", expires=None)
        else:
            state = "valid" if held.expires - now > self._refresh_before else "expiring"
            out.update(state=state if held.expires > now else "expired")
            out["expires"] = held.expires.isoformat()
        return out

    # -- internals ---------------------------------------------------------------------

    def _usable(self) -> _Held | None:
        """The held keys if unexpired, starting a background refresh when they are
        within ``refresh_before_s`` of expiry (and no retry pause is running)."""
        now = self._now()
        with self._lock:
            held = self._held
            if held is None or held.expires is None:
                return held
            if held.expires <= now:
                return None
            due = held.expires - now < self._refresh_before
            paused = self._retry_at is not None and now < self._retry_at
        if due and not paused:
            self._start()
        return held

    def _refuse_while_paused(self) -> None:
        """Nothing usable is held and the last attempt failed less than ``retry_s`` ago:
        fail at once with its reason instead of asking again for every request."""
        now = self._now()
        with self._lock:
            if self._retry_at is None or now >= self._retry_at or self._inflight is not None:
                return
            reason, retry_at = self._last_error, self._retry_at
        raise CredentialsUnavailable(
            f"{self.name} credentials: {reason} (next attempt at {retry_at.isoformat()})"
        )

    def _start(self) -> Future[_Held]:
        """The running resolution, or a new one on a worker thread (one at a time)."""
        with self._lock:
            if self._inflight is not None:
                return self._inflight
            future: Future[_Held] = Future()
            future.set_running_or_notify_cancel()  # running: nobody can cancel it
            self._inflight = future
        threading.Thread(
            target=self._resolve, args=(future,), name="spectra-ai-aws-credentials", daemon=True
        ).start()
        return future

    def _resolve(self, future: Future[_Held]) -> None:
        try:
            found = self._source()
            frozen: ReadOnlyCredentials = found.get_frozen_credentials()
            if not frozen.access_key or not frozen.secret_key:
                raise CredentialsUnavailable("the source returned incomplete keys")
            keys = BotocoreCredentials(frozen.access_key, frozen.secret_key, frozen.token)
            held = _Held(keys, _expiry(found))
        except Exception as exc:
            reason = _describe(exc)
            with self._lock:
                self._failures += 1
                self._last_error = reason
                self._retry_at = self._now() + self._retry
                self._inflight = None
                failures, kept = self._failures, self._held
            until = "nothing held" if kept is None else f"keeping the held keys to {_until(kept)}"
            log.warning(
                "refreshing %s credentials failed (%d failures): %s; %s",
                self.name,
                failures,
                reason,
                until,
            )
            future.set_exception(exc)
            return
        with self._lock:
            self._held = held
            self._refreshes += 1
            self._retry_at = None
            self._inflight = None
        log.info("%s credentials resolved, valid until %s", self.name, _until(held))
        future.set_result(held)


def _until(held: _Held) -> str:
    return "no expiry" if held.expires is None else held.expires.isoformat()


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, CredentialsUnavailable) else f"{type(exc).__name__}: {exc}"
