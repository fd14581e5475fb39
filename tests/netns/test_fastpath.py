"""The XDP fast path with real traffic through cs-gw-a: offload, keepalive, agent crash,
re-adoption, runtime deny rules, detach back to the kernel path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from typing import Any

import pytest

from perf.lab import ns_exec
from tests.netns.helpers import (
    agent,
    agent_status,
    document,
    http_get_json,
    reset_gateway,
    sh,
    wait_for,
)
from xdp import Dataplane, DenyRule, Reason, libbpf, loader

GW = "cs-gw-a"
WS = "cs-ws-a"


def redirected() -> int:
    dp = Dataplane.adopt(GW)
    try:
        return dp.counters()["reasons"][Reason.REDIRECT.name]["packets"]
    finally:
        dp.close()


def conntrack_lines(*match: str) -> list[str]:
    out = sh(GW, "conntrack", "-L", "-o", "id", *match).stdout
    return [line for line in out.splitlines() if line.strip()]


@pytest.fixture
def fresh_gateway(lab: Any) -> Iterator[dict[str, Any]]:
    """cs-gw-a with nothing attached or pinned, conntrack empty, short UDP timeouts."""

    reset_gateway(GW)
    sh(GW, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=3")
    sh(GW, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout_stream=3")
    yield lab.status()
    sh(GW, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=30")
    sh(GW, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout_stream=120")
    reset_gateway(GW)


def iperf3(status: dict[str, Any], *args: str) -> subprocess.Popen[str]:
    srv = status["services"]["iperf3"]
    return subprocess.Popen(
        ns_exec(WS, "iperf3", "-c", srv["address"], "-p", str(srv["port"]), "-J", *args),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_curl_udp_ping_go_through_the_fast_path(fresh_gateway: dict[str, Any]) -> None:
    st = fresh_gateway
    with agent(GW):
        assert agent_status(GW)["xdp_modes"] == {"inside": "native", "outside": "native"}
        http = st["services"]["http"]
        seen = http_get_json(WS, f"http://{http['address']}/")
        before = redirected()
        echo = st["services"]["udp_echo"]
        script = (
            "import socket,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
            "s.settimeout(2);s.bind(('0.0.0.0',40123));n=0\n"
            "for i in range(80):\n"
            f" s.sendto(b'x%d'%i,('{echo['address']}',{echo['port']}));"
            " n+=s.recv(100)==b'x%d'%i;time.sleep(0.05)\n"
            "print(n)"
        )
        udp = sh(WS, "python3", "-c", script)
        assert udp.stdout.strip() == "80", udp.stderr
        ping = sh(WS, "ping", "-c", "20", "-i", "0.05", "-W", "1", echo["address"])
        assert " 0% packet loss" in ping.stdout
        # Both flows were offloaded once assured (UDP: a packet 2 s after the first
        # reply, a stream; ICMP echo: replied): the rest of their packets took XDP.
        assert redirected() - before >= 40
        assert agent_status(GW)["offload"].get("offloaded_total", 0) >= 2
        assert seen["client_ip"] == st["gateways"]["a"]["outside_ip"]
        status = json.loads(
            subprocess.run(
                [sys.executable, "-m", "control", "status", "--json", "--instance", GW],
                capture_output=True, text=True, check=True,
            ).stdout
        )[GW]  # fmt: skip
        assert status["agent_running"] and status["xdp_modes"]["inside"] == "native"
        assert status["xdp_counters"]["reasons"]["REDIRECT"]["packets"] >= 40
        assert status["xdp_counters"]["flows"] >= 4
        assert status["offload"]["active"] >= 2


def test_offloaded_udp_flow_keeps_its_conntrack_entry(fresh_gateway: dict[str, Any]) -> None:
    """UDP stream timeout is 3 s here; the flow runs 8 s, mostly on the fast path, one
    entry throughout (the offloader refreshes it near its expiry)."""
    echo = fresh_gateway["services"]["udp_echo"]
    with agent(GW, document(nat={"timeouts": {"udp": 3, "udp_stream": 3}})):
        script = (
            "import socket,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
            "s.settimeout(1);s.bind(('0.0.0.0',40124));n=0\n"
            "for i in range(80):\n"
            f" s.sendto(b'k',('{echo['address']}',{echo['port']}));n+=s.recv(9)==b'k';"
            "time.sleep(0.1)\n"
            "print(n)"
        )
        with subprocess.Popen(ns_exec(WS, "python3", "-c", script), stdout=subprocess.PIPE,
                              text=True) as proc:  # fmt: skip
            time.sleep(1)
            first = conntrack_lines("-p", "udp", "--sport", "40124")
            assert len(first) == 1
            out, _ = proc.communicate(timeout=20)
        assert out.strip() == "80"
        last = conntrack_lines("-p", "udp", "--sport", "40124")
        # same conntrack id: the entry never expired although the kernel saw ~nothing
        assert last == first or last[0].split("id=")[1] == first[0].split("id=")[1]
        assert agent_status(GW)["offload"].get("keepalives", 0) > 0


def test_agent_kill9_loses_no_packet_and_restart_adopts(fresh_gateway: dict[str, Any]) -> None:
    with (
        agent(GW) as first,
        iperf3(fresh_gateway, "-u", "-b", "10M", "-t", "6", "-l", "1000", "-w", "4M") as client,
    ):
        wait_for(lambda: agent_status(GW)["offload"].get("active", 0) >= 1, 5, "offload of iperf3")
        # the UDP stream is offloaded once assured (2 s after its first reply)
        wait_for(lambda: redirected() > 100, 8, "iperf3's UDP on the fast path")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        during = redirected()
        time.sleep(1.5)
        assert redirected() > during  # forwarding went on with no agent at all
        with agent(GW):
            wait_for(lambda: agent_status(GW)["offload"].get("adopted", 0) >= 1, 5, "re-adoption")
            out, _ = client.communicate(timeout=20)
            assert (
                agent_status(GW)["offload"].get("offloaded_total", 0) == 0
            )  # adopted, not reinstalled
    summary = json.loads(out)["end"]["sum"]
    lost = {k: summary.get(k) for k in ("packets", "lost_packets", "out_of_order")}
    assert summary["lost_packets"] == 0, lost
    assert summary["packets"] > 5000, lost


def test_deny_rule_at_runtime_drops_within_one_second(fresh_gateway: dict[str, Any]) -> None:
    echo = fresh_gateway["services"]["udp_echo"]
    probe = (
        "import socket,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(0.2)\n"
        "for i in range(400):\n"
        f" time.sleep(0.01); s.sendto(b'd',('{echo['address']}',{echo['port']}))\n"
        " try: s.recv(9)\n"
        " except TimeoutError: print(i); break\n"
    )
    with agent(GW):
        dp = Dataplane.adopt(GW)
        try:
            rule = DenyRule(dst=IPv4Network(f"{echo['address']}/32"), proto=17, ports=(7, 7))
            with subprocess.Popen(ns_exec(WS, "python3", "-c", probe), stdout=subprocess.PIPE,
                                  text=True) as proc:  # fmt: skip
                time.sleep(0.5)
                added = time.monotonic()
                dp.set_deny_rules([rule])
                out, _ = proc.communicate(timeout=30)
            assert out.strip(), "traffic was never dropped"
            assert time.monotonic() - added < 1.0 + 0.2 * 2
            assert dp.counters()["deny_rules"][0]["packets"] >= 1
            http = fresh_gateway["services"]["http"]
            assert http_get_json(WS, f"http://{http['address']}/")  # other traffic flows
        finally:
            dp.set_deny_rules([])
            dp.close()


def test_detach_hands_established_flows_back_to_the_kernel(fresh_gateway: dict[str, Any]) -> None:
    with agent(GW) as proc, iperf3(fresh_gateway, "-t", "6") as client:
        wait_for(lambda: agent_status(GW)["offload"].get("active", 0) >= 1, 5, "offload of iperf3")
        proc.terminate()
        proc.wait(timeout=10)
        time.sleep(0.5)
        for ifname in ("inside", "outside"):
            sh(GW, "ip", "link", "set", "dev", ifname, "xdp", "off")
        out, _ = client.communicate(timeout=20)
    result = json.loads(out)
    assert "error" not in result, result.get("error")
    intervals = result["intervals"]
    assert all(i["sum"]["bytes"] > 0 for i in intervals[-2:])  # still flowing, via the kernel


def test_restart_after_an_upgrade_replaces_pins_and_programs_of_the_old_build(
    fresh_gateway: dict[str, Any],
) -> None:
    """Pins made by another build (another map layout) are never adopted: the new agent
    pins its own maps and replaces the old program on both interfaces, which would
    otherwise keep reading maps nobody writes."""
    pin_dir = loader.pin_dir_for(GW)
    with agent(GW):
        old = Dataplane.adopt(GW)
        old_id = libbpf.obj_id(old.program_fd())
        old.close()
    (marker,) = pin_dir.glob("layout-*")
    marker.rmdir()
    (pin_dir / "layout-0123456789abcdef").mkdir()  # what an older release left
    with agent(GW), iperf3(fresh_gateway, "-t", "3") as client:
        assert not (pin_dir / "layout-0123456789abcdef").exists()
        new = Dataplane.adopt(GW)
        try:
            new_id = libbpf.obj_id(new.program_fd())
            assert new_id != old_id
            attached = {
                ifname: json.loads(sh(GW, "ip", "-j", "link", "show", "dev", ifname).stdout)[0][
                    "xdp"
                ]["prog"]["id"]
                for ifname in ("inside", "outside")
            }
            assert attached == {"inside": new_id, "outside": new_id}
            wait_for(lambda: agent_status(GW)["offload"].get("active", 0) >= 1, 5, "offload")
            assert client.wait(timeout=20) == 0
            assert new.counters()["reasons"][Reason.REDIRECT.name]["packets"] > 0
        finally:
            new.close()
