"""Two-arm GWLB end to end: workload -> simulator (GENEVE) -> gateway (decap, kernel
NAT) -> internet, and back (reverse NAT, tc re-encap with the stored header)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from perf.gwlbsim import WORKLOAD_NS, GwlbLab
from perf.lab import INET_SERVICE_IP, TOPOLOGY
from tests.netns.helpers import http_get_json, sh

OUTSIDE_IPS = {gw.outside_ip for gw in TOPOLOGY.gateways}


def gateway_counters(netns: str) -> dict[str, int]:
    code = (
        f"import json; from geneve import Gwlb; g = Gwlb({netns!r}, 'gwlb').load(); "
        "print(json.dumps({k: v['packets'] for k, v in g.counters().items()}))"
    )
    proc = subprocess.run(
        ["python3", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    if proc.returncode:  # system python without the venv: use ours
        import sys

        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
    counters: dict[str, int] = json.loads(proc.stdout)
    return counters


def test_curl_is_source_natted_by_a_gateway(gwlb_lab: GwlbLab) -> None:
    seen = set()
    for _ in range(6):
        data = http_get_json(WORKLOAD_NS, f"http://{INET_SERVICE_IP}/")
        seen.add(data["client_ip"])
    assert seen <= OUTSIDE_IPS and seen
    state = gwlb_lab.state()["counters"]
    assert state["matched"] > 0
    assert state["mismatched"] == 0, state["mismatch_examples"]


def test_flows_spread_over_both_gateways(gwlb_lab: GwlbLab) -> None:
    seen = set()
    for _ in range(20):
        seen.add(http_get_json(WORKLOAD_NS, f"http://{INET_SERVICE_IP}/")["client_ip"])
        if seen == OUTSIDE_IPS:
            break
    assert seen == OUTSIDE_IPS


def test_iperf3_through_the_gwlb(gwlb_lab: GwlbLab) -> None:
    proc = sh(WORKLOAD_NS, "iperf3", "-c", INET_SERVICE_IP, "-t", "2", "-J", timeout=30)
    assert proc.returncode == 0, proc.stdout[-500:] + proc.stderr
    result = json.loads(proc.stdout)
    assert result["end"]["sum_received"]["bytes"] > 100_000
    state = gwlb_lab.state()["counters"]
    assert state["mismatched"] == 0, state["mismatch_examples"]
    for netns in ("cs-gw-a", "cs-gw-b"):
        c = gateway_counters(netns)
        assert c["DROP_ENCAP_ERROR"] == 0 and c["DROP_MALFORMED"] == 0


def test_udp_echo_returns(gwlb_lab: GwlbLab) -> None:
    code = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3); "
        f"s.sendto(b'ping', ('{INET_SERVICE_IP}', 7)); print(s.recv(100).decode())"
    )
    proc = sh(WORKLOAD_NS, "python3", "-c", code)
    assert proc.returncode == 0 and "ping" in proc.stdout, proc.stderr
