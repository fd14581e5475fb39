"""The dashboard's AI gateway page in Chromium: an admin creates a key through the form
(shown once, its HMAC in the document), the AI gateway process started from that
document serves requests with it against the fake OpenAI upstream, and the page shows
the key's requests, tokens and cost per model, totals and over time (the API samples
the gateway's state file); requests to a failing local model spill to the remote one
and the page counts the overflow decisions (the gateway's /metrics) and charts them;
revoking the key is a new config version."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import openai
import pytest
from playwright.sync_api import expect

from ai.keys import hash_key
from control.api import ApiSettings, token_entry
from control.config import dump_document, parse_document
from control.config.operations import ApiToken
from control.store import SqliteStore
from tests.e2e.ai.conftest import SECRET, Upstreams, free_port, launch_gateway
from tests.e2e.dashboard_browser import browser, login, new_page, poll, serve_api, shot

pytestmark = pytest.mark.timeout(180)


def _document(up: Upstreams, tmp: Path) -> dict[str, Any]:
    return {
        "interfaces": {"inside": "inside", "outside": "outside"},
        "ai": {
            "listen_host": "127.0.0.1",
            "listen_port": free_port(),
            "key_secret": {"file": str(tmp / "key-secret")},
            "providers": {
                "openai": {
                    "kind": "openai",
                    "base_url": up.urls["openai"] + "/v1",
                    "api_key": {"env": "E2E_OPENAI_KEY"},
                },
                "vllm": {"kind": "vllm", "base_url": up.urls["local"] + "/v1"},
            },
            "routes": [
                {"pattern": "gpt-*", "provider": "openai"},
                {
                    "pattern": "local/*",
                    "provider": "vllm",
                    "strip_prefix": "local/",
                    "overflow": {
                        "policy": "spill",
                        "spill_model": "gpt-4o-mini",
                        "ttft_timeout_s": 0.5,
                    },
                },
            ],
            "prices": [{"pattern": "gpt-*", "input_per_mtok": 1.0, "output_per_mtok": 2.0}],
            "audit": {"path": str(tmp / "audit.jsonl")},
            "state": {"path": str(tmp / "ai-state.sqlite3")},
        },
    }


def test_create_a_key_use_it_and_see_its_usage(upstreams: Upstreams, tmp_path: Path) -> None:
    upstreams.reset()
    (tmp_path / "key-secret").write_text(SECRET + "\n")
    token, entry = token_entry("alice", "admin")
    db = tmp_path / "config.db"
    store = SqliteStore(db)
    store.put(parse_document(_document(upstreams, tmp_path)), 0, "bootstrap")
    settings = ApiSettings(extra_tokens=(ApiToken.model_validate(entry),), history_seconds=0.5)
    try:
        with serve_api(db, lambda: {"instances": {}}, settings) as url, browser() as b:
            page = new_page(b)
            login(page, url, token)
            page.get_by_role("link", name="AI gateway").click()
            page.get_by_label("Key id").fill("team-a")
            page.get_by_label("Tenant").fill("analytics")
            page.get_by_label("Token budget (optional)").fill("100000")
            page.get_by_role("button", name="Create key").click()
            key = page.locator("#new-key-value").input_value()
            assert key.startswith("sk-spectra-")
            assert store.head() == 2
            (stored,) = store.get(2).ai.keys
            assert stored.hash == hash_key(SECRET, key) and stored.budget.max_tokens == 100000
            shot(page, "ai-key-created")

            # the AI gateway, as the appliance would start it from this document
            ai = dump_document(store.get(2), reveal_secrets=True)["ai"]
            gw = launch_gateway(tmp_path, ai)
            try:
                client = openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)
                # three upstream requests, then the first again: an exact cache hit
                for question in ("one", "two", "three", "one"):
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
                    )
                assert upstreams.requests("openai") == 3
                page.get_by_role("button", name="Done").click()
                # read from the running gateway's /metrics: 1 hit in 4 requests
                expect(page.locator("#exact-hit-rate")).to_have_text("25.0 %", timeout=15_000)
                # the local model fails before its first token: spilled to gpt-4o-mini
                for question in ("spill one", "spill two"):
                    client.chat.completions.create(
                        model="local/m-fail503", messages=[{"role": "user", "content": question}]
                    )
                assert upstreams.requests("local") == 2 and upstreams.requests("openai") == 5
                spilled = page.locator("#ai-overflow tr[data-decision='spill/spilled'] td")
                expect(spilled).to_have_text(["spill", "spilled", "2"], timeout=15_000)
                check_charts(page)
            finally:
                gw.stop()  # a clean stop writes the rest of the state file
            # metered: the five upstream calls (the cache hit cost nothing, the local
            # attempts were not answered)
            model = page.locator("tr[data-key='team-a'] li[data-model='gpt-4o-mini']")
            expect(model).to_contain_text(re.compile(r"^gpt-4o-mini: 5 requests"), timeout=15_000)
            tokens = page.locator("tr[data-key='team-a'] td.tokens")
            expect(tokens).to_contain_text(re.compile(r"^[1-9]\d* \(\d+\.\d % of 100000\)"))
            assert key not in page.content()  # gone once dismissed
            shot(page, "ai-usage")

            page.get_by_role("button", name="Revoke key team-a").click()
            expect(page.locator("tr[data-key='team-a'] td").nth(1)).to_have_text("revoked")
            assert store.head() == 3 and store.get(3).ai.keys[0].revoked
    finally:
        store.close()


def _peaks(page: Any, chart: str) -> dict[str, float]:
    """Each series of ``chart``: its label -> its highest value in the window."""
    labels = page.locator(f"#{chart} .u-legend .u-label").all_inner_texts()[1:]
    peaks: list[float] = page.evaluate(
        f"JSON.parse(document.querySelector('#{chart}').dataset.peak)"
    )
    return dict(zip(labels, peaks, strict=True))


def check_charts(page: Any) -> None:
    """The usage charts (per key and model, per minute) and the overflow chart rise."""

    def risen() -> bool:
        requests = _peaks(page, "chart-ai-requests").get("team-a · gpt-4o-mini", 0)
        tokens = _peaks(page, "chart-ai-tokens").get("team-a · gpt-4o-mini", 0)
        cost = _peaks(page, "chart-ai-cost").get("team-a · gpt-4o-mini", 0)
        spills = _peaks(page, "chart-ai-overflow").get("spill/spilled", 0)
        return requests > 0 and tokens > 0 and cost > 0 and spills > 0

    poll(risen, 20, "the AI usage and overflow charts to show the requests")
    page.locator("#chart-ai-overflow").scroll_into_view_if_needed()
