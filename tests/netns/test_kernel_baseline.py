"""The kernel baseline (forwarding + nftables masquerade + egress guard) with real traffic."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from typing import Any

import pytest

from perf.lab import TOPOLOGY, ns_exec
from tests.netns.helpers import agent, document, http_get_json, sh

KERNEL = document(interfaces={"data_plane": "kernel"})


@pytest.fixture
def agents(lab: Any) -> Any:
    with agent("cs-gw-a", KERNEL), agent("cs-gw-b", KERNEL):
        yield


def test_without_agent_private_source_gets_no_answer(lab: Any) -> None:
    for gw in TOPOLOGY.gateways:
        sh(gw.netns, "nft", "delete", "table", "inet", "spectra")
    svc = lab.status()["services"]["http"]
    proc = sh("cs-ws-a", "curl", "-s", "-m", "2", f"http://{svc['address']}/")
    assert proc.returncode != 0  # the internet has no route back to 10.0.0.0/8


def test_workloads_reach_the_internet_translated(lab_status: Any, agents: Any) -> None:
    svc = lab_status["services"]["http"]
    for gw in TOPOLOGY.gateways:
        seen = http_get_json(gw.workload_netns, f"http://{svc['address']}:{svc['port']}/")
        assert seen["client_ip"] == lab_status["gateways"][gw.az]["outside_ip"]


def test_udp_echo_and_ping_through_gateway(lab_status: Any, agents: Any) -> None:
    echo = lab_status["services"]["udp_echo"]
    script = (
        "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(2);"
        f"s.sendto(b'spectra',('{echo['address']}',{echo['port']}));print(s.recv(100).decode())"
    )
    proc = sh("cs-ws-a", "python3", "-c", script)
    assert proc.stdout.strip() == "spectra", proc.stderr
    assert sh("cs-ws-a", "ping", "-c", "2", "-W", "1", echo["address"]).returncode == 0


def test_iperf3_tcp_through_gateway(lab_status: Any, agents: Any) -> None:
    srv = lab_status["services"]["iperf3"]
    proc = sh("cs-ws-a", "iperf3", "-c", srv["address"], "-p", str(srv["port"]), "-t", "1", "-J")
    result = json.loads(proc.stdout)
    assert result["end"]["sum_received"]["bytes"] > 0


def test_invalid_and_malformed_never_leave_untranslated(lab_status: Any, agents: Any) -> None:
    """Whatever the workload sends, nothing with a private source reaches the internet."""
    gw = TOPOLOGY.gateway("a")
    dst = lab_status["services"]["http"]["address"]
    cap = subprocess.Popen(
        ns_exec(
            TOPOLOGY.inet_netns,
            "tcpdump",
            "-nn",
            "-l",
            "-i",
            gw.inet_if,
            "-w",
            "-",
            "src net 10.0.0.0/8 or src net 172.16.0.0/12 or src net 192.168.0.0/16",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1)
        # conntrack-INVALID flag combinations, mid-stream segments, odd protocols
        for flags in ("-SF", "-SR", "-FRAP", "-A", "-R", "-F", "-X -Y", ""):
            sh(
                gw.workload_netns,
                "hping3",
                "-q",
                "-c",
                "3",
                "-i",
                "u1000",
                *flags.split(),
                "-p",
                "80",
                dst,
                timeout=10,
            )
        sh(
            gw.workload_netns,
            "hping3",
            "-q",
            "-c",
            "3",
            "-i",
            "u1000",
            "--rawip",
            "-H",
            "47",
            dst,
            timeout=10,
        )
        time.sleep(1)
    finally:
        cap.send_signal(signal.SIGINT)
        out, _ = cap.communicate(timeout=10)
    pcap_header = 24
    assert len(out) <= pcap_header, f"{len(out) - pcap_header} bytes of untranslated packets"


def test_agent_restores_a_deleted_table(lab: Any) -> None:
    with agent("cs-gw-a", KERNEL):
        sh("cs-gw-a", "nft", "delete", "table", "inet", "spectra")
        deadline = time.monotonic() + 5
        while sh("cs-gw-a", "nft", "list", "table", "inet", "spectra").returncode != 0:
            assert time.monotonic() < deadline, "agent did not re-apply its table"
            time.sleep(0.1)
