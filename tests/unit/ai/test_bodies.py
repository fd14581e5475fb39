"""Request bodies over real HTTP: long valid prompts are read whole (through the openai
and anthropic SDKs, and chunked by a slow sender), and a body over the limit is 413
with or without a Content-Length (in Anthropic's shape on ``/v1/messages``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import aiohttp
import anthropic
import openai
import pytest
from aiohttp.test_utils import TestServer

from tests.unit.ai.conftest import KEY_A, audit_records, client_for
from tests.unit.ai.test_messages import sdk

KIB, MIB = 1024, 1024 * 1024
LIMIT = 4 * MIB  # the default max_body_bytes


def _prompt_body(size: int) -> bytes:
    """A valid chat request of exactly ``size`` bytes (an ordinary long prompt)."""
    head = {"model": "gpt-4o-mini", "max_tokens": 3, "messages": [{"role": "user"}]}
    empty = len(json.dumps({**head, "messages": [{"role": "user", "content": ""}]}))
    words = ("lorem ipsum dolor sit amet " * (size // 27 + 1))[: size - empty]
    body = json.dumps({**head, "messages": [{"role": "user", "content": words}]}).encode()
    assert len(body) == size
    return body


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [256 * KIB, 1 * MIB, 3 * MIB, LIMIT - KIB])
async def test_long_prompt_through_sdk(gateway: TestServer, size: int) -> None:
    content = json.loads(_prompt_body(size))["messages"][0]["content"]
    async with client_for(gateway) as client:
        out = await client.chat.completions.create(
            model="gpt-4o-mini", max_tokens=3, messages=[{"role": "user", "content": content}]
        )
    assert out.choices[0].message.content == "Echo: lorem ipsum"
    assert out.choices[0].finish_reason == "length"


async def _chunked(body: bytes, piece: int, pause: float) -> AsyncIterator[bytes]:
    for at in range(0, len(body), piece):
        yield body[at : at + piece]
        if pause:
            await asyncio.sleep(pause)


async def _post(server: TestServer, data: object) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY_A}"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            str(server.make_url("/v1/chat/completions")), data=data, headers=headers
        ) as resp,
    ):
        return resp.status, await resp.json()


@pytest.mark.asyncio
async def test_slow_chunked_sender_is_read_whole(gateway: TestServer) -> None:
    # 256 KiB in 64 pieces with a pause between: each read sees only part of the body.
    status, body = await _post(gateway, _chunked(_prompt_body(256 * KIB), 4 * KIB, 0.005))
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "Echo: lorem ipsum"  # type: ignore[index]


@pytest.mark.asyncio
async def test_chunked_body_over_limit_is_413(gateway: TestServer) -> None:
    big = _prompt_body(20 * 1000 * 1000)
    try:
        status, body = await _post(gateway, _chunked(big, 256 * KIB, 0.0))
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
        pytest.fail("the gateway must answer 413, not drop the connection")
    assert status == 413
    assert body["error"]["code"] == "request_too_large"  # type: ignore[index]
    assert str(LIMIT) in body["error"]["message"]  # type: ignore[index]
    records = await audit_records(gateway)
    assert [r["status"] for r in records] == [413]


@pytest.mark.asyncio
async def test_invalid_json_still_400(gateway: TestServer) -> None:
    body = _prompt_body(1 * MIB)[:-1]  # a long body that really is not JSON
    status, out = await _post(gateway, body)
    assert status == 400 and "not valid JSON" in str(out)
    async with client_for(gateway) as client:
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": ""}], n=0
            )


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [1 * MIB, LIMIT - KIB])
async def test_long_prompt_through_anthropic_sdk(gateway: TestServer, size: int) -> None:
    content = json.loads(_prompt_body(size))["messages"][0]["content"]
    async with sdk(gateway) as client:
        msg = await client.messages.create(
            model="claude-sonnet-4", max_tokens=3, messages=[{"role": "user", "content": content}]
        )
    assert msg.content[0].type == "text" and msg.content[0].text == "Echo: lorem ipsum"
    assert msg.stop_reason == "max_tokens"


@pytest.mark.asyncio
async def test_body_over_limit_on_messages_route_is_413(gateway: TestServer) -> None:
    content = "lorem ipsum " * (LIMIT // 12 + 1)
    async with sdk(gateway) as client:
        with pytest.raises(anthropic.APIStatusError) as big:
            await client.messages.create(
                model="claude-sonnet-4",
                max_tokens=3,
                messages=[{"role": "user", "content": content}],
            )
    assert big.value.status_code == 413
    assert big.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
