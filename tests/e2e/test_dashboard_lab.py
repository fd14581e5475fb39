"""The dashboard against the appliance in the lab: Chromium logs in to cs-gw-a's own
config API (its agent, ``spectra run``, in the gateway's namespace), the pps chart
moves while a workload sends UDP through the gateway, and a deny rule added through
the Config form stops that workload's traffic (the echo no longer answers, the drops
chart shows the deny reason)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control.api import token_entry
from perf.lab import TOPOLOGY, ns_exec
from tests.e2e.dashboard_browser import browser, login, new_page, poll, shot
from tests.netns.helpers import agent, document, sh

pytestmark = pytest.mark.timeout(240)
GW = TOPOLOGY.gateway("a")
# a workload sending ~1,000 UDP datagrams a second to the lab's echo service, for a bound
SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        s.sendto(b"x" * 200, (sys.argv[1], 7))
    except OSError:
        pass
    time.sleep(0.001)
"""


def _echo_ok(address: str) -> bool:
    script = (
        "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(0.3);"
        f"s.sendto(b'p',('{address}',7))\ntry: print(s.recv(9)==b'p')\nexcept OSError: print(False)"
    )
    return sh(GW.workload_netns, "python3", "-c", script).stdout.strip() == "True"


@pytest.fixture
def gateway(lab: Any, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """cs-gw-a's agent with its config API: (url, admin token, echo address)."""
    token, entry = token_entry("operator", "admin")
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps([entry]))
    echo = lab.status()["services"]["udp_echo"]["address"]
    with agent(GW.netns, document(), "--api-tokens", str(tokens), "--poll", "1"):
        yield f"http://{GW.mgmt_ip}:8080", token, echo


def _latest(page: Any, chart: str) -> list[float | None]:
    """The chart's latest values; [] while the page has not drawn it yet (just after
    a navigation the element is not there)."""
    value: list[float | None] = page.evaluate(
        f"(e => e && e.dataset.latest ? JSON.parse(e.dataset.latest) : [])"
        f"(document.querySelector('#{chart}'))"
    )
    return value


def test_pps_chart_moves_and_a_deny_rule_from_the_form_stops_the_workload(
    gateway: tuple[str, str, str],
) -> None:
    url, token, echo = gateway
    assert _echo_ok(echo)
    sender = subprocess.Popen(
        ns_exec(GW.workload_netns, "python3", "-c", SENDER, echo, "90"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with browser() as b:
            page = new_page(b)
            login(page, url, token)
            page.locator(f"tr[data-instance='{GW.netns}']").wait_for()
            # the chart's newest rate reflects the workload's ~1,000 pps (and the echoes)
            poll(
                lambda: (next(iter(_latest(page, "chart-pps")), None) or 0) > 300,
                30,
                "the pps chart to show the workload's traffic",
            )
            page.get_by_label("Time range").select_option("60")
            shot(page, "overview-lab")

            page.get_by_role("link", name="Config").click()
            page.locator("[data-add='rules.entries']").click()
            page.locator("[data-path='rules.entries[0].action']").select_option("deny")
            page.locator("[data-path='rules.entries[0].dst']").fill(f"{echo}/32")
            page.locator("[data-path='rules.entries[0].proto']").select_option("udp")
            page.locator("#apply").click()
            page.locator("#message.good").wait_for()
            started = time.monotonic()
            while _echo_ok(echo):
                assert time.monotonic() - started < 10, "the deny rule did not stop the echo"

            # the overview shows the drops by the deny rule, and the pps falls with them
            page.get_by_role("link", name="Overview").click()
            poll(
                lambda: any((v or 0) > 100 for v in _latest(page, "chart-drops")),
                30,
                "the drops chart to show the deny rule's drops",
            )
            labels = page.locator("#chart-drops .u-legend .u-label").all_inner_texts()
            assert f"{GW.netns} drop_deny" in labels
            shot(page, "overview-lab-deny")
    finally:
        sender.kill()
        sender.wait(timeout=10)
