"""The writes the Redis backend sends behind answers: bounded, keyed, drained."""

from __future__ import annotations

import asyncio

import pytest

from ai.offpath import OffPath


async def _write(gate: asyncio.Event, done: list[str], name: str) -> None:
    await gate.wait()
    done.append(name)


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_writes_run_behind_and_readers_of_their_key_wait() -> None:
    behind, gate, done = OffPath("test"), asyncio.Event(), []
    await behind.submit("a", _write(gate, done, "a1"))
    await behind.submit("b", _write(gate, done, "b1"))
    assert done == [] and behind.in_flight == 2  # submit returned before the write
    assert behind.pending("a") and not behind.pending("c")
    waiting = asyncio.create_task(behind.wait("a"))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    gate.set()
    await asyncio.wait_for(waiting, 2)
    assert "a1" in done
    await behind.drain()
    assert sorted(done) == ["a1", "b1"] and behind.in_flight == 0 and not behind.pending("a")


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_past_the_limit_the_caller_writes_inline() -> None:
    behind, gate, done = OffPath("test", limit=1), asyncio.Event(), []
    await behind.submit("a", _write(gate, done, "behind"))
    gate.set()
    await behind.submit("a", _write(gate, done, "inline"))
    assert done == ["inline"]  # the second one was awaited by submit itself
    await behind.drain()
    assert done == ["inline", "behind"]


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_a_failed_write_is_logged_and_drain_ends(caplog: pytest.LogCaptureFixture) -> None:
    async def fail() -> None:
        raise RuntimeError("boom")

    behind = OffPath("test")
    await behind.submit("a", fail())
    await behind.drain()
    assert behind.in_flight == 0
    assert any("boom" in r.getMessage() for r in caplog.records if r.name == "spectra.ai")


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_issued_waits_for_the_first_step_only() -> None:
    behind, gate, steps = OffPath("test"), asyncio.Event(), []

    async def write() -> None:
        steps.append("sent")  # what a command written to an ordered connection does
        await gate.wait()
        steps.append("answered")

    await behind.submit("a", write())
    assert steps == [] and behind.pending("a")
    await asyncio.wait_for(behind.issued("a"), 2)
    assert steps == ["sent"] and behind.pending("a")  # sent, not answered
    await asyncio.wait_for(behind.issued("b"), 2)  # nothing submitted: at once
    gate.set()
    await behind.drain()
    assert steps == ["sent", "answered"]
