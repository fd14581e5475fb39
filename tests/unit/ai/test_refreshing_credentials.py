"""Bedrock credentials held and refreshed on a worker thread (``ai.providers.credentials``):
a request waits only when nothing usable is held, and then off the loop with a timeout;
keys within five minutes of expiry are refreshed in the background; a failed refresh
keeps the held keys until they expire and is counted.  The source hands out botocore's
own refreshable credentials, so botocore's refresh runs where it would in production."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.credentials import Credentials as BotocoreCredentials
from botocore.credentials import RefreshableCredentials

from ai.config import ProviderConfig
from ai.providers import Credentials, ProviderError, UpstreamCall
from ai.providers.bedrock import _signed_headers
from ai.providers.credentials import CredentialsUnavailable, RefreshingCredentials


class Clock:
    def __init__(self) -> None:
        self.at = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


class Sts:
    """Stands for STS/IMDS behind botocore's refreshable credentials: each fetch issues
    new keys valid an hour; ``gate`` holds a fetch, ``fail`` refuses it."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.gate = threading.Event()
        self.gate.set()
        self.fail: str | None = None
        self.threads: list[int] = []
        self._creds: RefreshableCredentials | None = None

    @property
    def fetches(self) -> int:
        return len(self.threads)

    def fetch(self) -> dict[str, str]:
        self.threads.append(threading.get_ident())
        assert self.gate.wait(5)
        if self.fail:
            raise RuntimeError(self.fail)
        return {
            "access_key": f"AKIA{self.fetches}",
            "secret_key": "secret",
            "token": f"token-{self.fetches}",
            "expiry_time": (self.clock() + timedelta(hours=1)).isoformat(),
        }

    def __call__(self) -> BotocoreCredentials:
        if self._creds is None:
            meta = self.fetch()
            self._creds = RefreshableCredentials(
                meta["access_key"],
                meta["secret_key"],
                meta["token"],
                datetime.fromisoformat(meta["expiry_time"]),
                self.fetch,
                "test",
                time_fetcher=self.clock,
            )
        return self._creds


async def until(check: Any, what: str) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"not within 5 s: {what}")


async def key(held: RefreshingCredentials) -> str:
    return (await held.current()).access_key


@pytest.mark.asyncio
async def test_the_first_request_waits_off_the_loop_and_times_out() -> None:
    clock = Clock()
    sts = Sts(clock)
    sts.gate.clear()  # STS does not answer yet
    held = RefreshingCredentials(sts, now=clock, timeout_s=0.2)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    try:
        results = await asyncio.gather(key(held), key(held), return_exceptions=True)
    finally:
        task.cancel()
    assert all(isinstance(r, CredentialsUnavailable) for r in results)
    assert "not resolved within 0.2 s" in str(results[0])
    assert ticks >= 5  # the loop ran on while both requests waited
    assert sts.fetches == 1  # one resolution for both
    assert sts.threads[0] != threading.get_ident()
    assert held.status()["state"] == "none"
    sts.gate.set()
    await until(lambda: held.status()["refreshes"] == 1, "the first resolution")
    assert await key(held) == "AKIA1"
    assert sts.fetches == 1


@pytest.mark.asyncio
async def test_keys_near_expiry_are_refreshed_in_the_background() -> None:
    clock = Clock()
    sts = Sts(clock)
    held = RefreshingCredentials(sts, now=clock)
    assert await key(held) == "AKIA1"
    clock.advance(minutes=54)  # six minutes left: botocore would refresh, we need not
    assert await key(held) == "AKIA1"
    assert sts.fetches == 1
    assert held.status()["state"] == "valid"
    clock.advance(minutes=2)  # four minutes left
    sts.gate.clear()  # a slow STS: requests sign with the held keys meanwhile
    assert await key(held) == "AKIA1"
    await until(lambda: sts.fetches == 2, "the background refresh to start")
    assert held.status() | {"expires": None} == {
        "source": "aws",
        "state": "expiring",
        "expires": None,
        "refreshes": 1,
        "failures": 0,
        "last_error": None,
        "refreshing": True,
    }
    assert await key(held) == "AKIA1"
    assert sts.fetches == 2  # one refresh at a time
    sts.gate.set()
    await until(lambda: held.status()["refreshes"] == 2, "the refresh to finish")
    assert await key(held) == "AKIA2"
    assert held.status()["state"] == "valid"
    assert held.status()["expires"] == (clock() + timedelta(hours=1)).isoformat()
    assert threading.get_ident() not in sts.threads


@pytest.mark.asyncio
async def test_a_failed_refresh_keeps_the_held_keys_until_they_expire() -> None:
    clock = Clock()
    sts = Sts(clock)
    held = RefreshingCredentials(sts, now=clock, retry_s=30)
    assert await key(held) == "AKIA1"
    sts.fail = "AccessDenied: not authorized to perform sts:AssumeRole"
    clock.advance(minutes=56)
    assert await key(held) == "AKIA1"
    await until(lambda: held.status()["failures"] == 1, "the failed refresh")
    status = held.status()
    assert status["state"] == "expiring"
    assert status["last_error"] == "RuntimeError: " + sts.fail
    assert await key(held) == "AKIA1"  # within the retry pause: no new attempt
    assert sts.fetches == 2
    clock.advance(seconds=31)
    assert await key(held) == "AKIA1"
    await until(lambda: held.status()["failures"] == 2, "the retried refresh")
    clock.advance(minutes=4)  # the held keys expired
    with pytest.raises(CredentialsUnavailable, match="not authorized to perform"):
        await held.current()
    assert held.status()["state"] == "expired"
    with pytest.raises(ProviderError) as failed:
        await _signed_headers(call(held), "http://x/model/m/converse", b"{}", "application/json")
    assert failed.value.kind == "connect"
    assert "not authorized to perform sts:AssumeRole" in failed.value.message
    fetches = sts.fetches
    sts.fail = None  # STS answers again, but the retry pause runs: fail at once, no fetch
    with pytest.raises(CredentialsUnavailable, match="next attempt at"):
        await held.current()
    assert sts.fetches == fetches
    clock.advance(seconds=31)  # after the pause the next request resolves new keys
    assert await key(held) == f"AKIA{fetches + 1}"
    assert held.status()["state"] == "valid"


@pytest.mark.asyncio
async def test_static_keys_are_held_and_never_refreshed() -> None:
    calls: list[int] = []

    def static() -> BotocoreCredentials:
        calls.append(threading.get_ident())
        return BotocoreCredentials("AKIASTATIC", "secret")

    clock = Clock()
    held = RefreshingCredentials(static, now=clock)
    assert await key(held) == "AKIASTATIC"
    clock.advance(days=30)
    assert await key(held) == "AKIASTATIC"
    assert len(calls) == 1
    assert held.status()["state"] == "static"
    assert held().access_key == "AKIASTATIC"  # the AwsCredentialSource form


def call(source: RefreshingCredentials) -> UpstreamCall:
    config = ProviderConfig(kind="bedrock", base_url="http://127.0.0.1:9", region="eu-west-1")
    return UpstreamCall({"model": "m"}, None, config, Credentials(aws=source))  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_bedrock_signs_with_the_held_keys_resolved_off_the_loop() -> None:
    clock = Clock()
    sts = Sts(clock)
    held = RefreshingCredentials(sts, now=clock)
    for _ in range(3):
        headers = await _signed_headers(
            call(held), "http://x/model/m/converse", b"{}", "application/json"
        )
        assert "Credential=AKIA1/" in headers["Authorization"]
        assert headers["X-Amz-Security-Token"] == "token-1"
    assert sts.fetches == 1
    assert sts.threads[0] != threading.get_ident()
