"""End to end: the official anthropic SDK against the gateway process's ``/v1/messages``
(base URL = the gateway), routed to every provider's fake upstream: stream and
non-stream, a matched stop sequence, the prompt's tokens in ``message_start``, and the
required ``anthropic-version``."""

from __future__ import annotations

import anthropic
import pytest

from tests.e2e.ai.conftest import KEY_A, GatewayProcess

MODELS = ["gpt-4o-mini", "claude-3-haiku", "bedrock/anthropic.claude-v2:1", "local/llama"]


def sdk(gw: GatewayProcess, **kwargs: object) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=gw.url,
        api_key=KEY_A,
        max_retries=0,
        timeout=20,
        _strict_response_validation=True,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("model", MODELS)
def test_every_provider_through_the_anthropic_sdk(
    reject_gateway: GatewayProcess, model: str
) -> None:
    ask = [{"role": "user", "content": "hi e2e STOP never sent"}]
    with sdk(reject_gateway) as client:
        msg = client.messages.create(model=model, max_tokens=32, system="s", messages=ask)  # type: ignore[arg-type]
        assert msg.content[0].type == "text"
        assert msg.content[0].text == "Echo: hi e2e STOP never sent"
        assert msg.stop_reason == "end_turn" and msg.usage.output_tokens > 0
        with client.messages.stream(
            model=model,
            max_tokens=32,
            messages=ask,  # type: ignore[arg-type]
            stop_sequences=["STOP"],
        ) as stream:
            started = [e.message.usage for e in stream if e.type == "message_start"]
            final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == "Echo: hi e2e "
    assert started[0].input_tokens > 0
    if model == "gpt-4o-mini":  # OpenAI does not say which sequence matched
        assert (final.stop_reason, final.stop_sequence) == ("end_turn", None)
    else:
        assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "STOP")


def test_anthropic_version_is_required(reject_gateway: GatewayProcess) -> None:
    with (
        sdk(reject_gateway, default_headers={"anthropic-version": anthropic.Omit()}) as client,
        pytest.raises(anthropic.BadRequestError) as bad,
    ):
        client.messages.create(
            model="gpt-4o-mini", max_tokens=8, messages=[{"role": "user", "content": "x"}]
        )
    assert "anthropic-version: header is required" in bad.value.message
