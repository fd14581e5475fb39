"""The AI gateway's Bedrock provider on an agent run with ``--aws``: it signs with the
operational role the agent's session factory assumed (moto's STS), held and refreshed in
the background before expiry; a refused refresh keeps the held keys until they expire;
``spectra run``'s in-process gateway gets these credentials."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from ai.config import ProviderConfig
from ai.keys import hash_key
from ai.providers import Credentials, UpstreamCall
from ai.providers.bedrock import _signed_headers
from ai.providers.credentials import CredentialsUnavailable, RefreshingCredentials
from control.aws import OperationalRole, SectionSessions, SessionFactory, bedrock_credentials
from control.cli import _servers
from control.config import parse_document
from control.store import open_store
from tests.fakes.awsfault import Fault, FaultProxy
from tests.unit.ai.test_refreshing_credentials import until
from tests.unit.control.aws.conftest import REGION, base_session

ROLE = OperationalRole("gw-cross-account-role1", "ext-id-123", account_id="123456789012")
ROLE_SECTION = {"name": ROLE.name, "external_id": ROLE.external_id, "account_id": "123456789012"}
AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<signed>[^,]+), Signature=[0-9a-f]{64}$"
)


def signer(headers: Any) -> dict[str, str]:
    """The SigV4 Authorization header's parts (RFC-like grammar of "Signature Version 4")."""
    found = AUTH.match(headers["Authorization"])
    assert found is not None, headers["Authorization"]
    return found.groupdict()


def caller_arn(endpoint: str, key: str, secret: str, token: str) -> str:
    """Who moto's STS says these keys are."""
    sts = boto3.client(
        "sts",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        aws_session_token=token,
    )
    return str(sts.get_caller_identity()["Arn"])


def call(source: RefreshingCredentials) -> UpstreamCall:
    config = ProviderConfig(kind="bedrock", base_url="http://127.0.0.1:9", region=REGION)
    return UpstreamCall({"model": "m"}, None, config, Credentials(aws=source))  # type: ignore[arg-type]


async def sign(held: RefreshingCredentials) -> dict[str, str]:
    return await _signed_headers(call(held), "http://x/model/m/converse", b"{}", "application/json")


def section(endpoint: str) -> Any:
    doc = {
        "interfaces": {"inside": "a", "outside": "b"},
        "aws": {"region": REGION, "endpoint_url": endpoint, "operational_role": ROLE_SECTION},
    }
    return parse_document(doc).aws


@pytest.mark.asyncio
async def test_bedrock_signs_with_the_role_the_agents_factory_assumed(moto_endpoint: str) -> None:
    with FaultProxy(moto_endpoint) as proxy:
        sessions = SectionSessions(lambda: None, base=base_session())
        held = bedrock_credentials(sessions, section(proxy.url))
        assert proxy.calls == {}  # nothing before the first Bedrock request
        headers = await sign(held)
        again = await sign(held)
        assert proxy.calls[("sts", "AssumeRole")] == 1
    parts = signer(headers)
    assert parts["region"] == REGION and parts["service"] == "bedrock"
    assert parts["key"] != "testing"  # not the instance role's keys
    assert signer(again)["key"] == parts["key"]
    assumed = sessions.factory(section(proxy.url)).credentials().get_frozen_credentials()
    assert (assumed.access_key, assumed.token) == (parts["key"], headers["X-Amz-Security-Token"])
    arn = caller_arn(moto_endpoint, parts["key"], assumed.secret_key, assumed.token)
    assert arn.startswith("arn:aws:sts::123456789012:assumed-role/gw-cross-account-role1/")
    assert held.status()["state"] == "valid"


def factory_at(proxy: FaultProxy, endpoint: str, clock: list[datetime]) -> SessionFactory:
    return SessionFactory(
        REGION,
        endpoint,
        endpoints={"sts": proxy.url},
        base=base_session(),
        role=ROLE,
        now=lambda: clock[0],
    )


@pytest.mark.asyncio
async def test_near_expiry_the_role_is_assumed_again_in_the_background(
    moto_endpoint: str,
) -> None:
    clock = [datetime.now(UTC)]
    with FaultProxy(moto_endpoint) as proxy:
        factory = factory_at(proxy, moto_endpoint, clock)
        held = RefreshingCredentials(lambda: factory.credentials(), now=lambda: clock[0])
        first = signer(await sign(held))["key"]
        clock[0] += timedelta(minutes=50)  # botocore's refresh window, but 10 min left
        assert signer(await sign(held))["key"] == first
        assert proxy.calls[("sts", "AssumeRole")] == 1
        clock[0] += timedelta(minutes=6)  # under five minutes left (moto: one hour)
        assert signer(await sign(held))["key"] == first  # signed at once, old keys
        await until(lambda: held.status()["refreshes"] == 2, "the background AssumeRole")
        assert proxy.calls[("sts", "AssumeRole")] == 2
        clock[0] = datetime.now(UTC)  # moto dates the new keys' expiry by the real clock
        headers = await sign(held)
        fresh = factory.credentials().get_frozen_credentials()
        assert proxy.calls[("sts", "AssumeRole")] == 2
    second = signer(headers)["key"]
    assert second != first
    assert fresh.access_key == second
    assert caller_arn(moto_endpoint, second, fresh.secret_key, headers["X-Amz-Security-Token"])


@pytest.mark.asyncio
async def test_a_refused_assume_role_keeps_the_held_keys_until_expiry(moto_endpoint: str) -> None:
    clock = [datetime.now(UTC)]
    with FaultProxy(moto_endpoint) as proxy:
        factory = factory_at(proxy, moto_endpoint, clock)
        held = RefreshingCredentials(lambda: factory.credentials(), now=lambda: clock[0])
        first = signer(await sign(held))["key"]
        proxy.faults.append(Fault("sts", "AssumeRole", "AccessDenied", 403))
        clock[0] += timedelta(minutes=56)
        assert signer(await sign(held))["key"] == first
        await until(lambda: held.status()["failures"] == 1, "the refused refresh")
        assert signer(await sign(held))["key"] == first
        status = held.status()
        assert status["state"] == "expiring" and status["source"] == "aws"
        assert "AccessDenied" in status["last_error"]
        clock[0] += timedelta(minutes=5)  # the held keys expired
        with pytest.raises(CredentialsUnavailable, match="AccessDenied"):
            await held.current()
        assert held.status()["state"] == "expired"


def recorder() -> tuple[web.Application, list[dict[str, str]]]:
    """A Bedrock Converse upstream that keeps each request's headers."""
    seen: list[dict[str, str]] = []

    async def converse(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response(
            {
                "output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}},
                "stopReason": "end_turn",
                "usage": {"inputTokens": 3, "outputTokens": 1, "totalTokens": 4},
            }
        )

    app = web.Application()
    app.router.add_post("/model/{model}/converse", converse)
    return app, seen


@pytest.mark.asyncio
async def test_spectra_run_with_aws_hands_the_role_to_the_ai_gateway(
    moto_endpoint: str, tmp_path: Path
) -> None:
    upstream_app, seen = recorder()
    upstream = TestServer(upstream_app, host="127.0.0.1")
    await upstream.start_server()
    ai = {
        "listen_host": "127.0.0.1",
        "listen_port": 18091,  # never bound here
        "key_secret": {"env": "SPECTRA_TEST_KEY_SECRET"},
        "providers": {
            "br": {"kind": "bedrock", "base_url": str(upstream.make_url("")), "region": REGION}
        },
        "routes": [{"pattern": "br/*", "provider": "br", "strip_prefix": "br/"}],
        "keys": [{"id": "k", "hash": hash_key("pepper", "sk-test"), "tenant": "t"}],
    }
    doc = parse_document(
        {
            "interfaces": {"inside": "a", "outside": "b"},
            "ai": ai,
            "aws": {
                "region": REGION,
                "endpoint_url": moto_endpoint,
                "operational_role": ROLE_SECTION,
            },
        }
    )
    url = f"local:{tmp_path / 'config.db'}"
    store = open_store(url)
    store.put(doc, 0, "test")
    sessions = SectionSessions(lambda: None, base=base_session())
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SPECTRA_TEST_KEY_SECRET", "pepper")
        (gateway,) = [
            s
            for s in _servers(url, store, None, lambda: None, None, sessions)
            if s.name == "AI gateway"
        ]
        server = TestServer(gateway.factory(), host="127.0.0.1")
    await server.start_server()
    try:
        async with ClientSession() as http:
            body = {"model": "br/m", "messages": [{"role": "user", "content": "hello"}]}
            for _ in range(2):
                async with http.post(
                    server.make_url("/v1/chat/completions"),
                    json=body,
                    headers={"Authorization": "Bearer sk-test"},
                ) as resp:
                    answer = json.loads(await resp.text())
                    assert resp.status == 200, answer
                    assert answer["choices"][0]["message"]["content"] == "hi"
    finally:
        await server.close()
        await upstream.close()
        store.close()
    keys = {signer(h)["key"] for h in seen}
    assumed = sessions.factory(doc.aws).credentials().get_frozen_credentials()
    assert keys == {assumed.access_key}  # both requests, the operational role's keys
    assert {h["X-Amz-Security-Token"] for h in seen} == {assumed.token}


def test_the_agent_keeps_its_session_factory_only_with_aws() -> None:
    """``spectra run`` passes ``agent.aws_sessions`` to ``_servers``: with ``--aws`` the
    factory the converge steps use, without it none (the gateway keeps
    ``operational_credentials``)."""
    from control.agent import Agent, AgentSettings
    from control.store import SqliteStore

    def agent(aws: bool) -> Agent:
        name = f"bedrock-{uuid.uuid4().hex[:8]}"
        return Agent(AgentSettings(instance=name, aws=aws), SqliteStore(":memory:"))

    assert isinstance(agent(True).aws_sessions, SectionSessions)
    assert agent(False).aws_sessions is None
