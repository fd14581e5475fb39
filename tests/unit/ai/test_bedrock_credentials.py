"""Where the Bedrock provider's AWS credentials come from: the provider config's keys, or
the injected credential source (resolved off the event loop), never per request."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from botocore.credentials import Credentials as BotocoreCredentials

from ai.config import AIConfig, ProviderConfig
from ai.providers import Credentials, ProviderError, UpstreamCall
from ai.providers.bedrock import DefaultCredentialChain, _signed_headers
from ai.routing import Router


class Source:
    """A credential source that records the thread it was called on."""

    def __init__(self, fail: str | None = None) -> None:
        self.threads: list[int] = []
        self.fail = fail

    def __call__(self) -> BotocoreCredentials:
        self.threads.append(threading.get_ident())
        if self.fail:
            raise RuntimeError(self.fail)
        return BotocoreCredentials("AKIAOPERATIONAL", "secret", "session-token")


def call(credentials: Credentials) -> UpstreamCall:
    config = ProviderConfig(kind="bedrock", base_url="http://127.0.0.1:9", region="eu-west-1")
    return UpstreamCall({"model": "m"}, None, config, credentials)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_injected_source_signs_off_the_event_loop() -> None:
    source = Source()
    headers = await _signed_headers(
        call(Credentials(aws=source)), "http://x/model/m/converse", b"{}", "application/json"
    )
    assert "Credential=AKIAOPERATIONAL/" in headers["Authorization"]
    assert headers["X-Amz-Security-Token"] == "session-token"
    assert source.threads and source.threads[0] != threading.get_ident()


@pytest.mark.asyncio
async def test_configured_keys_win_over_the_source() -> None:
    source = Source()
    creds = Credentials(aws_access_key_id="AKIAKEYS", aws_secret_access_key="s", aws=source)
    headers = await _signed_headers(
        call(creds), "http://x/model/m/converse", b"{}", "application/json"
    )
    assert "Credential=AKIAKEYS/" in headers["Authorization"]
    assert source.threads == []


@pytest.mark.asyncio
async def test_a_source_without_credentials_is_a_named_connect_error() -> None:
    source = Source(fail="no operational role configured (aws.operational_role)")
    with pytest.raises(ProviderError) as failed:
        await _signed_headers(call(Credentials(aws=source)), "http://x", b"{}", "application/json")
    assert failed.value.kind == "connect"
    assert "no operational role configured" in failed.value.message


def test_router_hands_the_source_to_bedrock_providers_without_keys() -> None:
    source = Source()
    config = AIConfig.model_validate(
        {
            "providers": {
                "br": {"kind": "bedrock", "base_url": "http://b", "region": "eu-west-1"},
                "keyed": {
                    "kind": "bedrock",
                    "base_url": "http://b",
                    "aws_access_key_id": {"env": "AK"},
                    "aws_secret_access_key": {"env": "SK"},
                },
                "oa": {"kind": "openai", "base_url": "http://o", "api_key": {"env": "AK"}},
            },
            "routes": [
                {"pattern": "br/*", "provider": "br"},
                {"pattern": "keyed/*", "provider": "keyed"},
                {"pattern": "gpt-*", "provider": "oa"},
            ],
        }
    )
    router = Router(config, {"AK": "a", "SK": "s"}, source)
    assert router.resolve("br/x").credentials.aws is source
    assert router.resolve("keyed/x").credentials.aws is None
    assert router.resolve("gpt-4").credentials.aws is None
    assert source.threads == []  # nothing resolved before a request
    default: Any = Router(config, {"AK": "a", "SK": "s"}).resolve("br/x").credentials.aws
    assert isinstance(default, DefaultCredentialChain)
