"""GWLB decap at tc ingress (the fallback where XDP cannot attach), forced by the
document's ``gwlb.decap_hook: tc``: the agent reports the hook, no XDP program sits on
the GWLB interface, and two-arm traffic flows exactly as with XDP."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from perf.lab import INET_SERVICE_IP, TOPOLOGY
from perf.lab.gwlbsim import GwlbLab
from tests.netns.geneve.conftest import (
    GATEWAYS,
    GWLB,
    gateway_counters,
    gwlb_document,
    running,
)
from tests.netns.helpers import agent, agent_status, http_get_json, sh, wait_for

OUTSIDE_IPS = {gw.outside_ip for gw in TOPOLOGY.gateways}


@pytest.fixture(scope="module")
def gwlb_lab(lab_session: Any) -> Iterator[GwlbLab]:
    with running(lab_session, gwlb_document(mode="two-arm", decap_hook="tc")) as glab:
        yield glab


def test_agent_reports_tc_and_attached_no_xdp(gwlb_lab: GwlbLab) -> None:
    for netns in GATEWAYS:
        g = agent_status(netns)["gwlb"]
        assert (g["hook"], g["hook_requested"]) == ("tc", "tc")
        assert "forced by configuration" in g["hook_reason"]
        link = sh(netns, "ip", "-d", "link", "show", "dev", GWLB.gateway_if).stdout
        assert "prog/xdp" not in link, link
        ingress = sh(netns, "tc", "filter", "show", "dev", GWLB.gateway_if, "ingress").stdout
        assert "tc_gwlb_decap" in ingress, ingress


def test_curl_and_iperf3_through_tc_decap(gwlb_lab: GwlbLab) -> None:
    before = {netns: gateway_counters(netns) for netns in GATEWAYS}
    seen = {
        http_get_json(GWLB.workload_netns, f"http://{INET_SERVICE_IP}/")["client_ip"]
        for _ in range(6)
    }
    assert seen and seen <= OUTSIDE_IPS
    proc = sh(GWLB.workload_netns, "iperf3", "-c", INET_SERVICE_IP, "-t", "2", "-J", timeout=30)
    assert proc.returncode == 0, proc.stdout[-500:] + proc.stderr
    assert json.loads(proc.stdout)["end"]["sum_received"]["bytes"] > 100_000
    state = gwlb_lab.state()["counters"]
    assert state["mismatched"] == 0, state["mismatch_examples"]
    after = {netns: gateway_counters(netns) for netns in GATEWAYS}
    assert sum(after[n]["DECAP"] - before[n]["DECAP"] for n in GATEWAYS) > 1000
    for n in GATEWAYS:
        assert after[n]["DROP_DECAP_ERROR"] == 0 and after[n]["STORE_ERROR"] == 0


def _bpf_filters(netns: str, direction: str) -> list[str]:
    out = sh(netns, "tc", "filter", "show", "dev", GWLB.gateway_if, direction).stdout
    return [line for line in out.splitlines() if " bpf " in line and " handle " in line]


def test_restarted_agent_replaces_its_tc_filters_in_place(gwlb_lab: GwlbLab) -> None:
    """kill -9 leaves the tc filters behind; the next agent replaces them (one decap
    and one encap filter, never stacked: two decap filters would decapsulate twice)
    and the gateway carries GWLB traffic again."""
    t = GWLB.targets[0]
    os.kill(agent_status(t.netns)["pid"], signal.SIGKILL)
    gwlb_lab.wait_health(t.az, False)
    assert len(_bpf_filters(t.netns, "ingress")) == 1  # left behind, still decapsulating
    with agent(t.netns, gwlb_document(mode="two-arm", decap_hook="tc")):
        gwlb_lab.wait_health(t.az, True)
        ingress, egress = _bpf_filters(t.netns, "ingress"), _bpf_filters(t.netns, "egress")
        assert len(ingress) == 1 and "tc_gwlb_decap" in ingress[0], ingress
        assert len(egress) == 1 and "tc_gwlb_encap" in egress[0], egress
        before = gateway_counters(t.netns)["DECAP"]
        wait_for(
            lambda: (
                http_get_json(GWLB.workload_netns, f"http://{INET_SERVICE_IP}/")
                and gateway_counters(t.netns)["DECAP"] > before
            ),
            10,
            f"GWLB traffic through the restarted agent of {t.netns}",
        )
