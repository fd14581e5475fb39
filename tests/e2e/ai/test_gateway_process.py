"""End to end: the official SDKs against the gateway process against the fake upstreams."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import openai
import pytest

from ai.keys import hash_key
from tests.e2e.ai.conftest import KEY_A, KEY_B, ROOT, SECRET, GatewayProcess, Upstreams

KEY_NEW = "sk-spectra-e2e-added-later"
MODELS = ["gpt-4o-mini", "claude-3-haiku", "bedrock/anthropic.claude-v2:1", "local/llama"]


def sdk(gw: GatewayProcess, key: str = KEY_A) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=gw.url + "/v1",
        api_key=key,
        max_retries=0,
        timeout=20,
        _strict_response_validation=True,
    )


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from ai.cli import ai_group; ai_group()", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("model", MODELS)
def test_every_provider_streams_and_answers(reject_gateway: GatewayProcess, model: str) -> None:
    with sdk(reject_gateway) as client:
        resp = client.chat.completions.create(
            model=model,
            messages=[{"role": "system", "content": "s"}, {"role": "user", "content": "hi e2e"}],
        )
        assert resp.choices[0].message.content == "Echo: hi e2e"
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "stream e2e"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Echo: stream e2e"
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_errors_and_models(reject_gateway: GatewayProcess) -> None:
    with sdk(reject_gateway) as client:
        assert [m.id for m in client.models.list().data] == ["gpt-4o-mini"]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(
                model="nope", messages=[{"role": "user", "content": "x"}]
            )
    with sdk(reject_gateway, "sk-unknown") as client, pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_reject_makes_zero_remote_requests(
    reject_gateway: GatewayProcess, upstreams: Upstreams
) -> None:
    with sdk(reject_gateway) as client:
        for model in ("local/m-fail500", "local/m-errorevent", "local/m-slow2000"):
            with pytest.raises(openai.APIStatusError) as info:
                list(
                    client.chat.completions.create(
                        model=model,
                        stream=True,
                        messages=[{"role": "user", "content": "must stay local"}],
                    )
                )
            assert info.value.status_code == 503
            assert info.value.response.headers["retry-after"] == "3"
    assert upstreams.requests("local") == 3
    assert sum(upstreams.requests(n) for n in ("openai", "anthropic", "bedrock")) == 0


def test_spill_and_truncation(spill_gateway: GatewayProcess, upstreams: Upstreams) -> None:
    with sdk(spill_gateway) as client:
        resp = client.chat.completions.create(
            model="local/m-fail503", messages=[{"role": "user", "content": "spill me"}]
        )
        assert resp.choices[0].message.content == "Echo: spill me"
        assert upstreams.requests("openai") == 1
        text = ""
        with pytest.raises(openai.APIError, match="incomplete"):
            for chunk in client.chat.completions.create(
                model="local/m-failafter2",
                stream=True,
                messages=[{"role": "user", "content": "a b c d"}],
            ):
                text += chunk.choices[0].delta.content or "" if chunk.choices else ""
        assert text == "Echo: a"
        assert upstreams.requests("openai") == 1  # never switched after the first token
    spill_gateway.stop()
    records = [json.loads(line) for line in spill_gateway.audit.read_text().splitlines()]
    assert [r["overflow"] and r["overflow"]["decision"] for r in records] == [None, "spilled", None]
    assert records[-1]["commit"] == "truncated"


def test_budget_holds_under_concurrency(reject_gateway: GatewayProcess) -> None:
    async def run() -> list[object]:
        async with openai.AsyncOpenAI(
            base_url=reject_gateway.url + "/v1",
            api_key=KEY_A,
            max_retries=0,
            timeout=30,
            _strict_response_validation=True,
        ) as client:
            return await asyncio.gather(
                *(
                    client.chat.completions.create(
                        model="gpt-4o-mini",
                        max_tokens=6,
                        messages=[{"role": "user", "content": f"budget {i} of many"}],
                    )
                    for i in range(100)
                ),
                return_exceptions=True,
            )

    results = asyncio.run(run())
    ok = [r for r in results if isinstance(r, openai.types.chat.ChatCompletion)]
    assert ok and len(ok) < 100
    assert all(isinstance(r, openai.RateLimitError) for r in results if r not in ok)
    assert sum(r.usage.total_tokens for r in ok if r.usage) <= 500


def test_tenants_do_not_share_cache_and_audit_verifies(
    reject_gateway: GatewayProcess, upstreams: Upstreams
) -> None:
    msg = [{"role": "user", "content": "same words"}]
    with sdk(reject_gateway) as a, sdk(reject_gateway, KEY_B) as b:
        a.chat.completions.create(model="claude-3-haiku", messages=msg)
        a.chat.completions.create(model="claude-3-haiku", messages=msg)
        b.chat.completions.create(model="claude-3-haiku", messages=msg)
    assert upstreams.requests("anthropic") == 2
    reject_gateway.stop()
    ok = cli("audit", "verify", str(reject_gateway.audit))
    assert ok.returncode == 0, ok.stderr
    lines = reject_gateway.audit.read_text().splitlines()
    lines[1] = lines[1].replace('"tenant":"ta"', '"tenant":"tb"')
    reject_gateway.audit.write_text("\n".join(lines) + "\n")
    bad = cli("audit", "verify", str(reject_gateway.audit))
    assert bad.returncode == 1 and "edited" in bad.stderr


def test_an_edited_config_file_applies_without_a_restart(
    reject_gateway: GatewayProcess,
) -> None:
    """A key added to ``--config`` works within a few seconds; the process is the same."""
    path = reject_gateway.audit.parent / "ai.json"
    with sdk(reject_gateway, key=KEY_NEW) as client:
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
        config = json.loads(path.read_text())
        config["keys"].append({"id": "new", "hash": hash_key(SECRET, KEY_NEW), "tenant": "tn"})
        path.write_text(json.dumps(config))
        deadline = time.monotonic() + 10
        while True:
            try:
                models = client.models.list()
                break
            except openai.AuthenticationError:
                assert time.monotonic() < deadline, "the new key was not accepted in 10 s"
                time.sleep(0.2)
    assert any(m.id == "gpt-4o-mini" for m in models.data)
    assert reject_gateway.proc.poll() is None
