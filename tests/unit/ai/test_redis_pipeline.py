"""The chat pipeline over the redis state backend (a real ``redis-server``): the
exact read sent along with the reservation, the writes sent behind the answer."""

from __future__ import annotations

import openai
import pytest

from tests.redisd import RedisServer
from tests.unit.ai.conftest import KEY_A, KEY_B, Fakes, GatewayFactory, client_for


def _state(server: RedisServer) -> dict[str, object]:
    return {"backend": "redis", "redis": {"host": "127.0.0.1", "port": server.port}}


def _ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_refused_reservation_lets_go_of_the_lock_its_early_read_took(
    make_gateway: GatewayFactory, fakes: Fakes, redis_server: RedisServer
) -> None:
    gateway = await make_gateway(state=_state(redis_server), budget_a={"requests_per_minute": 1})
    async with client_for(gateway, KEY_A) as client:
        await client.chat.completions.create(model="gpt-4o-mini", messages=_ask("first"))
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=_ask("second"))
    # the second's read missed and took the flight lock with the reservation in flight;
    # the refusal released it (else other instances would wait flight_wait_s for it)
    assert redis_server.cli("--scan", "--pattern", "*:flight:*").split() == []
    assert fakes.requests("openai") == 1


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_an_answer_written_behind_is_the_next_request_s_hit(
    make_gateway: GatewayFactory, fakes: Fakes, redis_server: RedisServer
) -> None:
    gateway = await make_gateway(state=_state(redis_server))
    async with client_for(gateway, KEY_B) as client:
        first = await client.chat.completions.create(model="gpt-4o-mini", messages=_ask("q"))
        again = await client.chat.completions.create(model="gpt-4o-mini", messages=_ask("q"))
    assert again.choices[0].message.content == first.choices[0].message.content
    assert fakes.requests("openai") == 1  # the second was a hit on this instance's write
    assert redis_server.cli("--scan", "--pattern", "*:flight:*").split() == []
