"""Response headers clients use: ``x-request-id`` names the audit record of every answer
(JSON, stream, error), as OpenAI's does."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

from tests.unit.ai.conftest import KEY_A, KEY_B, GatewayFactory, audit_records, client_for

MSG: list[dict[str, str]] = [{"role": "user", "content": "hello there"}]


@pytest.mark.asyncio
async def test_request_id_names_the_audit_record(gateway: TestServer) -> None:
    async with client_for(gateway) as c:
        out = await c.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # type: ignore[arg-type]
        models = await c.models.list()
        with pytest.raises(openai.NotFoundError) as info:
            await c.chat.completions.create(model="nope-1", messages=MSG)  # type: ignore[arg-type]
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            str(gateway.make_url("/v1/chat/completions")),
            json={"model": "claude-sonnet-4", "stream": True, "messages": MSG},
            headers={"Authorization": f"Bearer {KEY_A}"},
        ) as resp,
    ):
        assert resp.status == 200
        streamed = resp.headers["x-request-id"]
        await resp.read()
    records = await audit_records(gateway)
    sent = [out._request_id, models._request_id, info.value.request_id, streamed]
    assert sent == [r["request_id"] for r in records]
    assert len(set(sent)) == 4


@pytest.mark.asyncio
async def test_rate_limit_headers(make_gateway: GatewayFactory) -> None:
    server = await make_gateway(budget_a={"requests_per_minute": 2, "tokens_per_minute": 500})
    async with client_for(server) as c:
        first = await c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MSG,  # type: ignore[arg-type]
            max_tokens=10,
        )
        second = await c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "another question"}],  # type: ignore[arg-type]
            max_tokens=10,
        )
        with pytest.raises(openai.RateLimitError) as info:
            await c.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # type: ignore[arg-type]
    async with client_for(server, KEY_B) as b:
        plain = await b.models.with_raw_response.list()
    u1, u2 = first.parse().usage, second.parse().usage
    assert u1 is not None and u2 is not None
    h1, h2, refused = first.headers, second.headers, info.value.response.headers
    assert h1["x-ratelimit-limit-requests"] == "2" and h1["x-ratelimit-limit-tokens"] == "500"
    assert h1["x-ratelimit-remaining-requests"] == "1"
    assert h2["x-ratelimit-remaining-requests"] == "0" == refused["x-ratelimit-remaining-requests"]
    # a JSON answer's headers are set after its reservation was reconciled to real usage
    assert int(h2["x-ratelimit-remaining-tokens"]) == 500 - u1.total_tokens - u2.total_tokens
    for h in (h1, h2, refused):
        for kind in ("requests", "tokens"):
            # the window's oldest entry (the first request, a moment ago) frees in ~60 s
            assert 50 <= int(h[f"x-ratelimit-reset-{kind}"].removesuffix("s")) <= 60
    assert int(refused["Retry-After"]) >= 1
    assert not any(k.lower().startswith("x-ratelimit") for k in plain.headers)  # no limits


@pytest.mark.asyncio
async def test_client_request_id_is_echoed_and_audited(gateway: TestServer) -> None:
    async with client_for(gateway) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MSG,  # type: ignore[arg-type]
            extra_headers={"X-Client-Request-Id": "job-17/step-3"},
        )
        with pytest.raises(openai.NotFoundError) as info:
            await c.chat.completions.create(
                model="nope-1",
                messages=MSG,  # type: ignore[arg-type]
                extra_headers={"X-Client-Request-Id": "job-17/step-4"},
            )
        with pytest.raises(openai.BadRequestError) as bad:
            await c.models.list(extra_headers={"X-Client-Request-Id": "x" * 513})
    assert raw.headers["x-client-request-id"] == "job-17/step-3"
    assert info.value.response.headers["x-client-request-id"] == "job-17/step-4"
    assert "x-client-request-id" not in bad.value.response.headers
    assert bad.value.body["param"] == "x-client-request-id"  # type: ignore[index]
    records = await audit_records(gateway)
    assert [r["client_request_id"] for r in records] == ["job-17/step-3", "job-17/step-4", None]
    assert raw.headers["x-request-id"] == records[0]["request_id"]
