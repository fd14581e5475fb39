"""Overflow policies of a local/* route and the commit point."""

from __future__ import annotations

import asyncio

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

from tests.promtext import parse, value
from tests.unit.ai.conftest import Fakes, GatewayFactory, audit_records, client_for

MSG = [{"role": "user", "content": "hello local"}]
FAILURES = ["local/m-fail500", "local/m-fail429", "local/m-errorevent", "local/m-slow3000"]
CASES = [(m, s) for m in FAILURES for s in (False, True)]


@pytest.mark.asyncio
@pytest.mark.parametrize(("model", "stream"), CASES)
async def test_reject_sends_nothing_remote(
    make_gateway: GatewayFactory, fakes: Fakes, model: str, stream: bool
) -> None:
    server = await make_gateway(
        overflow={"policy": "reject", "ttft_timeout_s": 0.5, "retry_after_s": 7}
    )
    async with client_for(server, timeout=10) as c:
        with pytest.raises(openai.APIStatusError) as info:
            got = await c.chat.completions.create(model=model, messages=MSG, stream=stream)
            if stream:
                async for _ in got:  # type: ignore[union-attr]
                    pass
    assert info.value.status_code == 503
    assert info.value.response.headers["Retry-After"] == "7"
    for remote in ("openai", "anthropic", "bedrock"):
        assert fakes.requests(remote) == 0
    record = (await audit_records(server))[-1]
    assert record["overflow"]["decision"] == "rejected"
    assert record["status"] == 503


@pytest.mark.asyncio
async def test_reject_on_admission_limit(make_gateway: GatewayFactory, fakes: Fakes) -> None:
    server = await make_gateway(
        overflow={"policy": "reject", "max_concurrency": 2, "ttft_timeout_s": 5}
    )
    async with client_for(server, timeout=10) as c:
        results = await asyncio.gather(
            *(
                c.chat.completions.create(
                    model="local/m-slow400", messages=[{"role": "user", "content": f"q{i}"}]
                )
                for i in range(6)
            ),
            return_exceptions=True,
        )
    ok = [r for r in results if not isinstance(r, BaseException)]
    rejected = [r for r in results if isinstance(r, openai.APIStatusError)]
    assert len(ok) == 2 and len(rejected) == 4
    assert all(r.status_code == 503 for r in rejected)
    assert fakes.requests("local") == 2 and fakes.requests("openai") == 0


@pytest.mark.asyncio
@pytest.mark.parametrize("stream", [False, True])
async def test_spill_reruns_pipeline_remotely(
    make_gateway: GatewayFactory, fakes: Fakes, stream: bool
) -> None:
    server = await make_gateway(
        overflow={"policy": "spill", "spill_model": "gpt-4o-mini", "ttft_timeout_s": 2}
    )
    async with client_for(server) as c:
        if stream:
            got = await c.chat.completions.create(
                model="local/m-fail503", messages=MSG, stream=True
            )
            text = "".join([ch.choices[0].delta.content or "" async for ch in got if ch.choices])
        else:
            resp = await c.chat.completions.create(model="local/m-fail503", messages=MSG)
            text = resp.choices[0].message.content or ""
    assert text == "Echo: hello local"
    assert fakes.requests("local") == 1 and fakes.requests("openai") == 1
    records = await audit_records(server)
    child, parent = records[-2], records[-1]
    assert parent["overflow"]["decision"] == "spilled"
    assert child["parent"] == parent["request_id"]
    assert child["model_requested"] == "gpt-4o-mini" and child["provider"] == "openai"
    assert child["commit"] == "completed" and child["usage"]["completion"] == 3


@pytest.mark.asyncio
async def test_queue_waits_then_503(make_gateway: GatewayFactory, fakes: Fakes) -> None:
    server = await make_gateway(
        overflow={
            "policy": "queue",
            "max_concurrency": 1,
            "max_queue": 4,
            "queue_timeout_s": 1.0,
            "ttft_timeout_s": 5,
        }
    )
    async with client_for(server, timeout=10) as c:
        # Two fit in the wait (0.3 s each within 1 s); the queue is bounded in time.
        results = await asyncio.gather(
            *(
                c.chat.completions.create(
                    model="local/m-slow300", messages=[{"role": "user", "content": f"q{i}"}]
                )
                for i in range(5)
            ),
            return_exceptions=True,
        )
        assert sum(not isinstance(r, BaseException) for r in results) >= 2
        assert any(isinstance(r, openai.APIStatusError) and r.status_code == 503 for r in results)
        # A persistently failing engine: retried within the bound, then 503.
        with pytest.raises(openai.APIStatusError) as info:
            await c.chat.completions.create(model="local/m-fail500", messages=MSG)
    assert info.value.status_code == 503
    assert fakes.requests("openai") == 0
    record = (await audit_records(server))[-1]
    assert record["overflow"]["policy"] == "queue" and record["overflow"]["attempts"] > 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "model", ["local/m-failafter2", "gpt-failafter2", "claude-failafter2", "bedrock/m-failafter2"]
)
async def test_failure_after_first_token_truncates(
    make_gateway: GatewayFactory, fakes: Fakes, model: str
) -> None:
    server = await make_gateway(overflow={"policy": "spill", "spill_model": "gpt-4o-mini"})
    async with client_for(server) as c:
        got = await c.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "one two three four"}], stream=True
        )
        text = ""
        with pytest.raises(openai.APIError, match="incomplete") as info:
            async for chunk in got:
                for choice in chunk.choices:
                    text += choice.delta.content or ""
    assert text == "Echo: one"
    assert "incomplete" in str(info.value)
    if model.startswith("local/"):  # non-stream local answers are read from a stream too
        async with client_for(server) as c:
            with pytest.raises(openai.APIStatusError, match="incomplete") as failed:
                await c.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "one two three four five"}]
                )
        assert failed.value.status_code == 502
        assert fakes.requests("openai") == 0
    assert fakes.requests("openai") == (1 if model.startswith("gpt") else 0)  # never spilled
    record = (await audit_records(server))[-1]
    assert record["commit"] == "truncated"
    assert record["overflow"] is None


@pytest.mark.asyncio
async def test_no_done_after_truncation(make_gateway: GatewayFactory) -> None:
    import aiohttp

    from tests.unit.ai.conftest import KEY_A

    server: TestServer = await make_gateway()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            str(server.make_url("/v1/chat/completions")),
            json={
                "model": "local/m-failafter1",
                "stream": True,
                "messages": [{"role": "user", "content": "a b c"}],
            },
            headers={"Authorization": f"Bearer {KEY_A}"},
        ) as resp,
    ):
        body = await resp.text()
    assert resp.status == 200
    assert "[DONE]" not in body and '"error"' in body


@pytest.mark.asyncio
async def test_overflow_decisions_are_counted_in_metrics(
    make_gateway: GatewayFactory, fakes: Fakes
) -> None:
    """Each decision in the audit log is one count of ``spectra_ai_overflow_decisions``:
    requests served after waiting for the slot are ``queued``, the ones the bounded wait
    gave up on ``rejected``; the one admitted at once is no decision."""
    server = await make_gateway(
        overflow={"policy": "queue", "max_concurrency": 1, "max_queue": 4,
                  "queue_timeout_s": 0.7, "ttft_timeout_s": 5}
    )  # fmt: skip
    async with client_for(server, timeout=10) as c:
        results = await asyncio.gather(
            *(
                c.chat.completions.create(
                    model="local/m-slow300", messages=[{"role": "user", "content": f"q{i}"}]
                )
                for i in range(4)
            ),
            return_exceptions=True,
        )
    served = sum(not isinstance(r, BaseException) for r in results)
    assert 2 <= served < 4
    decisions = [r["overflow"] for r in await audit_records(server)]
    queued = [d for d in decisions if d and d["decision"] == "queued"]
    rejected = [d for d in decisions if d and d["decision"] == "rejected"]
    assert len(queued) == served - 1 and len(rejected) == 4 - served
    assert decisions.count(None) == 1
    async with aiohttp.ClientSession() as http:
        text = await (await http.get(server.make_url("/metrics"))).text()
    types, samples = parse(text)
    assert types["spectra_ai_overflow_decisions"] == "counter"
    name = "spectra_ai_overflow_decisions_total"
    assert value(samples, name, policy="queue", decision="queued") == len(queued)
    assert value(samples, name, policy="queue", decision="rejected") == len(rejected)
