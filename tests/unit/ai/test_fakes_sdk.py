"""The fakes are faithful: the official anthropic SDK and boto3's bedrock-runtime client
parse them; the event-stream codec agrees with botocore's."""

from __future__ import annotations

import asyncio
import zlib

import anthropic
import boto3
import pytest
from botocore.config import Config
from botocore.eventstream import EventStreamBuffer

from ai.providers.eventstream import Decoder, EventStreamError, encode
from tests.unit.ai.conftest import Fakes


@pytest.mark.asyncio
async def test_anthropic_sdk_against_fake(fakes: Fakes) -> None:
    async with anthropic.AsyncAnthropic(
        base_url=fakes.url("anthropic"), api_key="k", max_retries=0
    ) as client:
        msg = await client.messages.create(
            model="claude-cached",
            max_tokens=100,
            system="be brief",
            messages=[{"role": "user", "content": "hi there"}],
        )
        assert msg.content[0].type == "text" and msg.content[0].text == "Echo: hi there"
        assert msg.usage.cache_read_input_tokens == 3
        async with client.messages.stream(
            model="claude-x",
            max_tokens=100,
            messages=[{"role": "user", "content": "a b"}],
            tools=[{"name": "look", "input_schema": {"type": "object"}}],
        ) as stream:
            final = await stream.get_final_message()
        assert final.stop_reason == "tool_use"
        assert final.content[0].type == "tool_use" and final.content[0].input == {"query": "a b"}
        with pytest.raises(anthropic.APIStatusError):
            async with client.messages.stream(
                model="claude-errorevent",
                max_tokens=10,
                messages=[{"role": "user", "content": "x"}],
            ) as stream:
                await stream.get_final_message()
        with pytest.raises(anthropic.InternalServerError):
            await client.messages.create(
                model="claude-fail500", max_tokens=10, messages=[{"role": "user", "content": "x"}]
            )


def _boto_client(url: str) -> object:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=url,
        region_name="eu-west-1",
        aws_access_key_id="AKIAFAKE",
        aws_secret_access_key="secret",
        config=Config(retries={"max_attempts": 1}),
    )


def _converse_stream(url: str, model: str) -> list[dict[str, object]]:
    client = _boto_client(url)
    try:
        resp = client.converse_stream(  # type: ignore[attr-defined]
            modelId=model,
            messages=[{"role": "user", "content": [{"text": "one two"}]}],
            system=[{"text": "sys"}],
        )
        stream = resp["stream"]
        try:
            return list(stream)
        finally:
            stream.close()
    finally:
        client.close()  # type: ignore[attr-defined]


def _converse(url: str, model: str) -> dict[str, object]:
    client = _boto_client(url)
    try:
        result: dict[str, object] = client.converse(  # type: ignore[attr-defined]
            modelId=model, messages=[{"role": "user", "content": [{"text": "one two"}]}]
        )
        return result
    finally:
        client.close()  # type: ignore[attr-defined]


@pytest.mark.asyncio
async def test_boto3_converse_stream_against_fake(fakes: Fakes) -> None:
    events = await asyncio.to_thread(
        _converse_stream, fakes.url("bedrock"), "anthropic.claude-3-haiku-20240307-v1:0-cached"
    )
    text = "".join(
        e["contentBlockDelta"]["delta"]["text"]  # type: ignore[index]
        for e in events
        if "contentBlockDelta" in e
    )
    assert text == "Echo: one two"
    assert events[0] == {"messageStart": {"role": "assistant"}}
    usage = events[-1]["metadata"]["usage"]  # type: ignore[index]
    assert usage["cacheReadInputTokens"] == 4  # type: ignore[index]
    response = await asyncio.to_thread(_converse, fakes.url("bedrock"), "m")
    assert response["stopReason"] == "end_turn"
    from botocore.exceptions import EventStreamError as BotoEventStreamError

    with pytest.raises(BotoEventStreamError):
        await asyncio.to_thread(_converse_stream, fakes.url("bedrock"), "m-errorevent")


def test_codec_round_trip_and_botocore_agrees() -> None:
    frame = encode({":event-type": "contentBlockDelta", ":message-type": "event"}, b'{"a":1}')
    buffer = EventStreamBuffer()
    buffer.add_data(frame)
    (message,) = list(buffer)
    assert message.headers[":event-type"] == "contentBlockDelta"
    assert message.payload == b'{"a":1}'
    decoder = Decoder()
    assert decoder.feed(frame[:5]) == [] and decoder.pending == 5  # a cut-off frame
    (decoded,) = decoder.feed(frame[5:] + frame[:0])
    assert decoder.pending == 0
    assert decoded.headers == {":event-type": "contentBlockDelta", ":message-type": "event"}
    corrupted = bytearray(frame)
    corrupted[-6] ^= 0xFF
    with pytest.raises(EventStreamError, match="message CRC"):
        Decoder().feed(bytes(corrupted))
    bad_prelude = bytearray(frame)
    bad_prelude[2] ^= 0x01
    with pytest.raises(EventStreamError, match="prelude CRC"):
        Decoder().feed(bytes(bad_prelude))
    assert zlib.crc32(frame[:8]).to_bytes(4, "big") == frame[8:12]
