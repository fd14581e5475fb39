"""The AI gateway's ``/metrics``, parsed by ``prometheus_client``'s text parser: request
counters, tokens and cost, upstream and added latency histograms, bounded labels."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import openai
import pytest
from aiohttp.test_utils import TestServer

from ai.config import AIConfig
from ai.metrics import MAX_MODELS, OTHER, GatewayMetrics
from ai.server import create_app
from ai.trace import Trace
from ai.usage import Usage
from tests.promtext import parse, value
from tests.unit.ai.conftest import ENV, Fakes, client_for, config_dict


async def _scrape(server: TestServer) -> str:
    async with aiohttp.ClientSession() as http:
        resp = await http.get(server.make_url("/metrics"))
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return await resp.text()


@pytest.mark.asyncio
async def test_requests_tokens_and_latencies(gateway: TestServer) -> None:
    async with client_for(gateway) as client:
        for _ in range(2):
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "count me"}]
            )
        with pytest.raises(openai.NotFoundError):
            await client.chat.completions.create(
                model="nosuch-model", messages=[{"role": "user", "content": "x"}]
            )
    types, samples = parse(await _scrape(gateway))
    assert types["spectra_ai_requests"] == "counter"
    ok = {"endpoint": "chat", "status": "200", "provider": "openai"}
    hits = value(samples, "spectra_ai_requests_total", **ok, cache="hit")
    misses = value(samples, "spectra_ai_requests_total", **ok, cache="miss")
    assert (hits, misses) == (1, 1)  # the second, identical request: the exact cache
    assert value(samples, "spectra_ai_requests_total", endpoint="chat", status="404",
                 provider="", cache="skip") == 1  # fmt: skip
    assert value(samples, "spectra_ai_tokens_total", provider="openai", model="gpt-4o-mini",
                 kind="completion") == 3  # fmt: skip
    assert value(samples, "spectra_ai_cost_usd_total", provider="openai",
                 model="gpt-4o-mini") > 0  # fmt: skip
    assert types["spectra_ai_upstream_seconds"] == "histogram"
    assert value(samples, "spectra_ai_upstream_seconds_count", provider="openai") == 1
    assert types["spectra_ai_added_latency_seconds"] == "histogram"
    assert value(samples, "spectra_ai_added_latency_seconds_count", endpoint="chat") == 3


@pytest.mark.asyncio
async def test_metrics_off_when_the_document_says_so(fakes: Fakes, tmp_path: Path) -> None:
    config = AIConfig.model_validate(config_dict(fakes, tmp_path))
    server = TestServer(create_app(config, env=ENV, serve_metrics=False), host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            assert (await http.get(server.make_url("/metrics"))).status == 404
    finally:
        await server.close()


def test_model_labels_are_bounded() -> None:
    metrics = GatewayMetrics()
    for i in range(MAX_MODELS + 10):
        trace = Trace("chat", provider="openai", model_routed=f"m{i}")
        trace.usage = Usage(1, 1)
        trace.mark("total")
        metrics.observe(trace)
    _types, samples = parse(metrics.render().decode())
    models = {
        dict(labels)["model"] for name, labels in samples if name == "spectra_ai_tokens_total"
    }
    assert len(models) == MAX_MODELS + 1 and OTHER in models
    assert value(samples, "spectra_ai_tokens_total", provider="openai", model=OTHER,
                 kind="prompt") == 10  # fmt: skip
