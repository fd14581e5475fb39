"""Response headers clients use: ``x-request-id`` names the audit record of every answer
(JSON, stream, error), as OpenAI's does."""

from __future__ import annotations

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

from tests.unit.ai.conftest import KEY_A, audit_records, client_for

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
