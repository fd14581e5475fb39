"""GET /v1/models, POST /v1/embeddings, config validation, routing."""

from __future__ import annotations

import openai
import pytest
from aiohttp.test_utils import TestServer
from pydantic import ValidationError

from ai.config import AIConfig, OverflowConfig
from tests.unit.ai.conftest import (
    KEY_A,
    KEY_REVOKED,
    Fakes,
    GatewayFactory,
    audit_records,
    client_for,
)


@pytest.mark.asyncio
async def test_models(client: openai.AsyncOpenAI, gateway: TestServer) -> None:
    page = await client.models.list()
    ids = {m.id: m.owned_by for m in page.data}
    assert ids == {"gpt-4o-mini": "openai", "claude-sonnet-4": "anthropic", "local/llama": "vllm"}
    for key, exc in (
        ("sk-wrong", openai.AuthenticationError),
        (KEY_REVOKED, openai.PermissionDeniedError),
    ):
        async with client_for(gateway, key) as other:
            with pytest.raises(exc):
                await other.models.list()
    records = await audit_records(gateway)
    assert [(r["endpoint"], r["status"], r["key_id"]) for r in records] == [
        ("models", 200, "key-a"),
        ("models", 401, None),
        ("models", 403, "key-r"),
    ]
    assert records[0]["tenant"] == "tenant-a" and records[2]["error"]["code"] == "key_revoked"


@pytest.mark.asyncio
async def test_embeddings(client: openai.AsyncOpenAI) -> None:
    # The SDK's default base64 answer does not pass its own strict validation (the
    # validator runs before it decodes), so the strict client asks for floats.
    resp = await client.embeddings.create(
        model="text-embedding-3-small", input=["a b", "c"], encoding_format="float"
    )
    assert len(resp.data) == 2 and len(resp.data[0].embedding) == 8
    assert resp.usage.prompt_tokens > 0 and resp.model == "text-embedding-3-small"
    floats = await client.embeddings.create(model="local/embed", input="x", encoding_format="float")
    assert len(floats.data[0].embedding) == 8
    with pytest.raises(openai.BadRequestError):
        await client.embeddings.create(model="claude-sonnet-4", input="x", encoding_format="float")


@pytest.mark.asyncio
async def test_embeddings_base64_passes_through(gateway: TestServer) -> None:
    async with openai.AsyncOpenAI(
        base_url=str(gateway.make_url("/v1")), api_key=KEY_A, max_retries=0
    ) as lenient:
        resp = await lenient.embeddings.create(model="text-embedding-3-small", input="a b")
    assert len(resp.data[0].embedding) == 8


@pytest.mark.asyncio
async def test_local_embeddings_fail_closed(make_gateway: GatewayFactory, fakes: Fakes) -> None:
    server = await make_gateway(overflow={"policy": "spill", "spill_model": "gpt-4o-mini"})
    async with client_for(server) as c:
        with pytest.raises(openai.APIStatusError) as info:
            await c.embeddings.create(
                model="local/embed-fail500", input="x", encoding_format="float"
            )
    assert info.value.status_code == 503
    assert fakes.requests("openai") == 0


def test_config_is_strict() -> None:
    with pytest.raises(ValidationError, match="Extra inputs"):
        AIConfig.model_validate({"listen_port": 1, "bogus": 1})
    with pytest.raises(ValidationError, match="spill_model"):
        OverflowConfig(policy="spill")
    with pytest.raises(ValidationError, match="names provider 'nope'"):
        AIConfig.model_validate({"routes": [{"pattern": "x", "provider": "nope"}]})
    assert AIConfig().listen_port == 8090
    dumped = AIConfig().model_dump_json()
    assert AIConfig.model_validate_json(dumped) == AIConfig()
