"""The dashboard in a real browser (Debian's Chromium driven by Playwright) against a
real config API: every action is an API call, and each shows up in the store. The
status provider here is synthetic (counters that grow with the clock); the lab test
(test_dashboard_lab.py) drives the appliance's own counters with real traffic."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from control.api import ApiSettings, token_entry
from control.config import parse_document
from control.config.operations import ApiToken
from control.store import SqliteStore
from tests.e2e.dashboard_browser import Api, browser, login, new_page, poll, serve_api, shot

pytestmark = pytest.mark.timeout(180)
DOC = {"interfaces": {"inside": "inside", "outside": "outside"}}
DENY = "198.51.100.7/32"
FLOWS = [
    ("10.0.1.5", "198.51.100.7", 90_000),
    ("10.0.1.6", "198.51.100.7", 2_000),
    ("10.0.1.5", "192.0.2.80", 30_000),
]


def lease_events(t0: float) -> list[dict[str, Any]]:
    """What gw-1's lease reports (``control.aws.lease``): it took over from gw-2, its
    first takeover stopped at a step and a retry completed it."""
    base = {"key": "eu-west-1a", "holder": "gw-1", "previous": "gw-2", "token": 8}
    return [
        {**base, "kind": "took_over", "at": t0 - 30, "reason": "gw-2's lease expired"},
        {**base, "kind": "takeover_failed", "at": t0 - 29, "reason": "ReplaceRoute: throttled"},
        {**base, "kind": "takeover_recovered", "at": t0 - 20,
         "reason": "completed after: ReplaceRoute: throttled"},
    ]  # fmt: skip


class Served:
    def __init__(self, url: str, store: SqliteStore, tokens: dict[str, str]) -> None:
        self.url, self.store, self.tokens = url, store, tokens
        self.api = Api(url)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    tokens: dict[str, str] = {}
    entries = []
    for name, role in (("alice", "admin"), ("bob", "admin"), ("viewer", "read")):
        token, entry = token_entry(name, role)  # type: ignore[arg-type]
        tokens[name] = token
        entries.append(ApiToken.model_validate(entry))
    db = tmp_path / "config.db"
    store = SqliteStore(db)
    store.put(parse_document(DOC), 0, "bootstrap")
    t0 = time.time()

    def status() -> dict[str, Any]:
        pkts = int((time.time() - t0) * 20_000)  # 20 kpps, 90 % on the fast path
        return {
            "instances": {
                "gw-1": {
                    "applied_version": store.head(),
                    "converged": True,
                    "agent_running": True,
                    "data_plane": "xdp",
                    "xdp_modes": {"inside": "native", "outside": "native"},
                    "aws": {
                        "role": "leader",
                        "availability_zone": "eu-west-1a",
                        "lease": {"events": lease_events(t0)},
                    },
                    "inspection": {"engine": "builtin", "rules_loaded": 3, "rules_failed": 0},
                    "conntrack": {"count": 1200, "max": 262144, "insert_failed": pkts // 200},
                    "offload": {"nat_ports_busiest": 40},
                    "links": {  # 60 % of the packets come from the workloads
                        "inside": {"rx_packets": pkts * 6 // 10, "rx_bytes": pkts * 600},
                        "outside": {"rx_packets": pkts * 4 // 10, "rx_bytes": pkts * 400},
                    },
                    "xdp_counters": {
                        "reasons": {
                            "REDIRECT": {"packets": pkts * 9 // 10, "bytes": pkts * 900},
                            "PASS_NO_FLOW": {"packets": pkts // 10, "bytes": pkts * 100},
                            "DROP_DENY": {"packets": pkts // 100, "bytes": pkts},
                        }
                    },
                }
            }
        }

    flow_log = tmp_path / "gw-1" / "flow.jsonl"
    flow_log.parent.mkdir()
    flow_log.write_text(
        "".join(
            json.dumps({"srcaddr": src, "srcport": 40000 + i, "dstaddr": dst, "dstport": 443,
                        "protocol": 6, "packets": n // 100, "bytes": n, "end": int(t0) - 60 * i,
                        "nat-srcaddr": "203.0.113.9", "nat-srcport": 1024 + i}) + "\n"
            for i, (src, dst, n) in enumerate(FLOWS)
        )
    )  # fmt: skip
    settings = ApiSettings(extra_tokens=tuple(entries), history_seconds=0.5)
    with serve_api(db, status, settings, lambda: {"gw-1": flow_log}) as url:
        try:
            yield Served(url, store, tokens)
        finally:
            store.close()


def test_login_overview_charts_move_and_logout(served: Served) -> None:
    with browser() as b:
        page = new_page(b)
        page.goto(served.url + "/")
        shot(page, "login")
        page.get_by_label("API token").fill("spk_" + "x" * 40)
        page.get_by_role("button", name="Log in").click()
        assert page.get_by_role("alert").inner_text() == "That token is not valid."
        login(page, served.url, served.tokens["alice"])
        assert page.inner_text("#who") == "alice (admin)"
        row = page.locator("tr[data-instance='gw-1']")
        row.wait_for()
        cells = row.locator("td").all_inner_texts()
        assert cells[0] == "healthy" and cells[1] == "leader"
        assert cells[3] == "xdp (inside native, outside native)"
        # the pps chart gains points and shows a rate near 20 kpps without a reload
        chart = page.locator("#chart-pps")
        poll(lambda: int(chart.get_attribute("data-points") or 0) >= 3, 20, "3 chart points")
        first = int(chart.get_attribute("data-points") or 0)
        poll(lambda: int(chart.get_attribute("data-points") or 0) > first + 2, 20, "more points")
        latest = page.evaluate("JSON.parse(document.querySelector('#chart-pps').dataset.latest)")
        assert 10_000 < latest[0] < 30_000
        fast = page.evaluate("JSON.parse(document.querySelector('#chart-fast').dataset.latest)")
        assert 80 < fast[0] < 100
        out, inbound = page.evaluate(
            "JSON.parse(document.querySelector('#chart-pps-dir').dataset.latest)"
        )
        assert 8_000 < out < 16_000 and 5_000 < inbound < 11_000
        legend = page.locator("#chart-pps-dir .u-legend .u-label").all_inner_texts()
        assert legend[1:] == ["gw-1 out (rx inside)", "gw-1 in (rx outside)"]
        # 100 insert failures per second (pkts // 200 at 20 kpps), apart from the NAT ports
        failed = page.evaluate(
            "JSON.parse(document.querySelector('#chart-insert-failed').dataset.latest)"
        )
        assert 50 < failed[0] < 150
        ports = page.evaluate(
            "JSON.parse(document.querySelector('#chart-nat-ports').dataset.latest)"
        )
        assert ports == [40]
        # the lease's events, newest first, the failed step marked
        events = page.locator("#lease-events tbody tr")
        assert [events.nth(i).get_attribute("data-event") for i in range(3)] == [
            "takeover_recovered", "takeover_failed", "took_over"]  # fmt: skip
        assert events.nth(1).get_attribute("class") == "bad"
        cells = events.nth(2).locator("td").all_inner_texts()
        assert cells[1:] == ["eu-west-1a", "took over (routes, NAT address)", "gw-1", "gw-2", "8",
                             "gw-2's lease expired"]  # fmt: skip
        page.get_by_label("Time range").select_option("60")
        shot(page, "overview")
        # the token lives in this tab's sessionStorage only, never in the URL
        assert served.tokens["alice"] not in page.url
        assert page.evaluate("localStorage.length") == 0
        page.get_by_role("button", name="Log out").click()
        page.get_by_label("API token").wait_for()
        assert page.evaluate("sessionStorage.length") == 0


def _open_config(page: Any, served: Served, who: str) -> None:
    login(page, served.url, served.tokens[who])
    page.get_by_role("link", name="Config").click()
    page.locator("#section-rules").wait_for()


def test_add_a_deny_rule_through_the_form_review_and_apply(served: Served) -> None:
    with browser() as b:
        page = new_page(b)
        _open_config(page, served, "alice")
        page.locator("[data-add='rules.entries']").click()
        page.locator("[data-path='rules.entries[0].action']").select_option("deny")
        page.locator("[data-path='rules.entries[0].dst']").fill(DENY)
        page.get_by_role("button", name="Review changes (dry run)").click()
        page.locator("#review-changes").wait_for()
        changes = page.locator("#review-changes tbody tr td:nth-child(2)").all_inner_texts()
        assert "rules.entries[0]" in changes
        page.get_by_text("Rendered nftables ruleset").click()
        assert DENY.split("/")[0] in page.inner_text("#ruleset")
        shot(page, "config-review")
        page.locator("#apply").click()
        expect(page.locator("#message")).to_have_text(re.compile("^applied as version 2"))
        assert served.store.head() == 2
        rule = served.store.get(2).rules.entries[0]
        assert (rule.action, str(rule.dst)) == ("deny", DENY)
        assert served.store.versions(1)[0].actor == "alice"
        page.get_by_role("link", name="History").click()
        page.locator("#versions tr[data-version='2']").wait_for()
        page.get_by_role("button", name="Show the changes of version 2").click()
        page.locator("#version-changes").wait_for()
        shot(page, "history")
        page.get_by_role("button", name="Roll back to version 1").click()
        expect(page.locator("#message")).to_have_text(re.compile("^rolled back to 1"))
        assert served.store.head() == 3 and served.store.get(3).rules.entries == []


def test_an_invalid_value_shows_the_apis_message_at_the_field(served: Served) -> None:
    bad = {**DOC, "rules": {"entries": [{"action": "deny", "dst": "198.51.100.300/32"}]}}
    status, reply = served.api.call(
        "PUT", "/v1/config", served.tokens["bob"], {"document": bad}, {"If-Match": '"1"'}
    )
    assert status == 422
    (expected,) = [
        e for e in reply["error"]["details"]["errors"] if e["path"] == "rules.entries[0].dst"
    ]
    with browser() as b:
        page = new_page(b)
        _open_config(page, served, "alice")
        page.locator("[data-add='rules.entries']").click()
        page.locator("[data-path='rules.entries[0].action']").select_option("deny")
        field = page.locator("[data-path='rules.entries[0].dst']")
        field.fill("198.51.100.300/32")
        page.locator("#apply").click()
        error = page.locator("[data-error-for='rules.entries[0].dst']")
        error.wait_for()
        assert error.inner_text() == expected["message"]
        assert field.get_attribute("aria-invalid") == "true"
        # the field names its error for assistive technology
        assert error.get_attribute("id") in (field.get_attribute("aria-describedby") or "")
        assert "nothing was applied" in page.inner_text("#message")
        shot(page, "config-invalid")
    assert served.store.head() == 1


def test_a_read_only_token_sees_no_edit_controls_and_cannot_edit(served: Served) -> None:
    with browser() as b:
        page = new_page(b)
        _open_config(page, served, "viewer")
        assert page.inner_text("#who") == "viewer (read-only)"
        page.locator("#readonly-note").wait_for()
        assert page.locator("#apply").count() == 0
        assert page.locator("[data-add]").count() == 0
        assert page.locator("button.remove").count() == 0
        assert page.locator("[data-path='rules.default']").is_disabled()
        shot(page, "config-read-only")
        page.get_by_role("link", name="History").click()
        page.locator("#versions tr[data-version='1']").wait_for()
        assert page.locator("[data-rollback]").count() == 0
    status, reply = served.api.call(
        "PUT", "/v1/config", served.tokens["viewer"], {"document": DOC}, {"If-Match": '"1"'}
    )
    assert status == 403 and reply["error"]["code"] == "forbidden"
    status, _ = served.api.call(
        "POST", "/v1/config/rollback", served.tokens["viewer"], {"to_version": 1}
    )
    assert status == 403
    assert served.store.head() == 1


def test_a_concurrent_change_is_shown_not_overwritten(served: Served) -> None:
    with browser() as b:
        page = new_page(b)
        _open_config(page, served, "alice")
        page.locator("[data-add='rules.entries']").click()
        page.locator("[data-path='rules.entries[0].action']").select_option("deny")
        page.locator("[data-path='rules.entries[0].dst']").fill(DENY)
        # bob writes version 2 while alice edits from version 1
        other = {**DOC, "rules": {"default": "deny", "entries": []}}
        status, _ = served.api.call(
            "PUT", "/v1/config", served.tokens["bob"], {"document": other}, {"If-Match": '"1"'}
        )
        assert status == 200
        page.locator("#apply").click()
        page.locator("#conflict").wait_for()
        assert "by bob" in page.inner_text("#conflict")
        theirs = page.locator("#conflict-changes tbody tr td:nth-child(2)").all_inner_texts()
        assert theirs == ["rules.default"]
        shot(page, "config-conflict")
        assert served.store.head() == 2 and served.store.get(2).rules.default == "deny"
        assert served.store.get(2).rules.entries == []
        # alice's edit is still there; she chooses to keep it over bob's version
        assert page.locator("[data-path='rules.entries[0].dst']").input_value() == DENY
        page.locator("#rebase").click()
        page.locator("#apply").click()
        expect(page.locator("#message")).to_have_text(re.compile("^applied as version 3"))
        assert served.store.head() == 3


def test_inspection_page_lists_engines(served: Served) -> None:
    with browser() as b:
        page = new_page(b)
        login(page, served.url, served.tokens["viewer"])
        page.get_by_role("link", name="Inspection").click()
        page.locator("#engines tbody tr").wait_for()
        cells = page.locator("#engines tbody tr td").all_inner_texts()
        assert cells[0] == "builtin" and cells[2] == "3"
        shot(page, "inspection")


def test_flows_rank_talkers_and_search_by_address(served: Served) -> None:
    with browser() as b:
        page = new_page(b)
        login(page, served.url, served.tokens["viewer"])
        page.get_by_role("link", name="Flows").click()
        top = page.locator("#top-src-gw-1 tbody th")
        expect(top).to_have_text(["10.0.1.5", "10.0.1.6"])
        # over time: 10.0.1.5's flows ended two minutes apart (a quiet minute between)
        page.get_by_label("Address").fill("10.0.1.5")
        page.get_by_role("button", name="Search").click()
        per_minute = page.locator("#flows-per-minute-gw-1")
        expect(per_minute).to_have_attribute("data-points", "3")
        bits = page.evaluate("JSON.parse(document.querySelector('#flow-bits-gw-1').dataset.peak)")
        assert bits == [90_000 * 8 / 60]
        assert per_minute.get_attribute("data-latest") == "[1]"
        shot(page, "flows")
        page.get_by_label("Address").fill("192.0.2.80")
        page.get_by_role("button", name="Search").click()
        rows = page.locator(".flows tbody tr")
        expect(rows).to_have_count(1)
        assert rows.locator("td").nth(2).inner_text() == "192.0.2.80:443"
        page.get_by_label("Address").fill("not-an-address")
        page.get_by_role("button", name="Search").click()
        expect(page.locator("#flows-error")).to_contain_text("expected an IP address")
