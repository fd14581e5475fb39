"""One-arm GWLB end to end, driven by the agent: the gateway decapsulates, the kernel
filters and routes the inner packet back out of the GWLB interface (the agent's policy
route), tc re-encapsulates it with the stored header, and the GWLB forwards it on.
No NAT: the internet sees the workload's own address."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from perf.lab import INET_SERVICE_IP
from perf.lab.gwlbsim import GwlbLab
from tests.netns.geneve.conftest import (
    GATEWAYS,
    GWLB,
    gateway_counters,
    gwlb_document,
    running,
)
from tests.netns.helpers import agent_status, http_get_json, sh


@pytest.fixture(scope="module")
def gwlb_lab(lab_session: Any) -> Iterator[GwlbLab]:
    with running(lab_session, gwlb_document(mode="one-arm")) as glab:
        yield glab


def test_agent_routes_gwlb_traffic_back_to_the_gwlb(gwlb_lab: GwlbLab) -> None:
    for netns in GATEWAYS:
        assert agent_status(netns)["gwlb"]["mode"] == "one-arm"
        rules = sh(netns, "ip", "rule", "show").stdout
        assert f"iif {GWLB.gateway_if} lookup 1081" in rules, rules
        route = sh(netns, "ip", "route", "show", "table", "1081").stdout
        assert f"dev {GWLB.gateway_if}" in route, route


def test_curl_returns_encapsulated_without_nat(gwlb_lab: GwlbLab) -> None:
    before = {netns: gateway_counters(netns) for netns in GATEWAYS}
    for _ in range(6):
        assert (
            http_get_json(GWLB.workload_netns, f"http://{INET_SERVICE_IP}/")["client_ip"]
            == GWLB.workload_ip
        )
    state = gwlb_lab.state()["counters"]
    assert state["mismatched"] == 0, state["mismatch_examples"]
    assert state["matched"] >= 6 * 4  # each packet of each curl, both ways, came back
    after = {netns: gateway_counters(netns) for netns in GATEWAYS}
    encapsulated = sum(after[n]["ENCAP"] - before[n]["ENCAP"] for n in GATEWAYS)
    decapsulated = sum(after[n]["DECAP"] - before[n]["DECAP"] for n in GATEWAYS)
    assert encapsulated == decapsulated > 0  # everything that came in went back out


def test_iperf3_one_arm(gwlb_lab: GwlbLab) -> None:
    proc = sh(GWLB.workload_netns, "iperf3", "-c", INET_SERVICE_IP, "-t", "2", "-J", timeout=30)
    assert proc.returncode == 0, proc.stdout[-500:] + proc.stderr
    assert json.loads(proc.stdout)["end"]["sum_received"]["bytes"] > 100_000
    state = gwlb_lab.state()["counters"]
    assert state["mismatched"] == 0, state["mismatch_examples"]
