"""Flow logs and firewall logs with real traffic through cs-gw-a (kernel data path).

The agent runs with ``logging.flow_logs`` and ``logging.firewall_logs`` on and an ICMP
deny rule.  A workload's HTTP request (TCP) and UDP echo exchange go through the
gateway; flushing the gateway's conntrack table ends them (DESTROY events), and each
must appear in ``flow.jsonl`` as a version-5 record with its 5-tuple, packets and bytes
in both directions and the NAT address it was translated to.  The workload's ping to
the internet is dropped by the deny rule and must appear in ``firewall.jsonl`` naming
that rule.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control.agent import LOG_ROOT
from perf.lab import TOPOLOGY
from tests.netns.helpers import agent, agent_status, document, reset_gateway, sh, wait_for

GW = TOPOLOGY.gateway("a")
WS = GW.workload_netns
UDP_SPORT = 40177


@pytest.fixture
def gateway(lab: Any) -> Iterator[dict[str, Any]]:
    reset_gateway(GW.netns)
    for name in ("flow.jsonl", "firewall.jsonl"):
        (LOG_ROOT / GW.netns / name).unlink(missing_ok=True)
    yield lab.status()
    reset_gateway(GW.netns)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines()]


def udp_exchange(address: str, port: int) -> None:
    script = (
        "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(2);"
        f"s.bind(('0.0.0.0',{UDP_SPORT}));n=0\n"
        f"for i in range(5):\n s.sendto(b'x%d'%i,('{address}',{port})); n+=s.recv(100)==b'x%d'%i\n"
        "print(n)"
    )
    out = sh(WS, "python3", "-c", script)
    assert out.stdout.strip() == "5", out.stderr


def test_flows_and_denied_packets_are_logged(gateway: dict[str, Any]) -> None:
    http, echo = gateway["services"]["http"], gateway["services"]["udp_echo"]
    doc = document(
        interfaces={"data_plane": "kernel"},
        logging={"flow_logs": True, "firewall_logs": {"enabled": True, "rate_per_second": 20}},
        rules={"entries": [{"action": "deny", "proto": "icmp", "comment": "no ICMP out"}]},
    )
    flows, firewall = LOG_ROOT / GW.netns / "flow.jsonl", LOG_ROOT / GW.netns / "firewall.jsonl"
    with agent(GW.netns, doc):
        got = sh(WS, "curl", "-s", "-m", "5", f"http://{http['address']}:{http['port']}/")
        assert got.returncode == 0, got.stderr
        udp_exchange(echo["address"], echo["port"])
        assert sh(WS, "ping", "-c", "3", "-i", "0.2", "-W", "1", echo["address"]).returncode != 0
        sh(GW.netns, "conntrack", "-F")  # ends every flow: DESTROY events

        def logged() -> tuple[dict[str, Any], dict[str, Any]] | None:
            recs = read_jsonl(flows)
            tcp = [r for r in recs if r["protocol"] == 6 and r["dstaddr"] == http["address"]]
            udp = [r for r in recs if r["protocol"] == 17 and r["srcport"] == UDP_SPORT]
            return (tcp[0], udp[0]) if tcp and udp else None

        tcp, udp = wait_for(logged, 10, "flow records of the TCP and UDP flows")
        for rec, (port, proto) in ((tcp, (http["port"], 6)), (udp, (echo["port"], 17))):
            assert (rec["version"], rec["srcaddr"], rec["dstaddr"], rec["dstport"]) == (
                5, GW.workload_ip, rec["pkt-dstaddr"], port,
            )  # fmt: skip
            assert rec["protocol"] == proto and rec["nat-srcaddr"] == GW.outside_ip
            assert isinstance(rec["nat-srcport"], int) and rec["flow-direction"] == "egress"
            assert rec["packets-orig"] > 0 and rec["packets-reply"] > 0
            assert rec["bytes"] == rec["bytes-orig"] + rec["bytes-reply"] > 0
            assert rec["start"] <= rec["end"] and rec["action"] == "ACCEPT"
        assert udp["srcport"] == UDP_SPORT and udp["packets"] == 10  # 5 each way

        def denied() -> list[dict[str, Any]]:
            return [r for r in read_jsonl(firewall) if r["src_ip"] == GW.workload_ip]

        drops = wait_for(denied, 10, "firewall records of the denied pings")
        assert {(r["rule"], r["comment"], r["proto"]) for r in drops} == {
            ("rules.entries[0]", "no ICMP out", "ICMP")
        }
        assert all(r["dest_ip"] == echo["address"] and r["icmp_type"] == 8 for r in drops)

        def counted() -> dict[str, Any] | None:
            st: dict[str, Any] = agent_status(GW.netns)["traffic_logs"]
            done = st.get("flow_logs", {}).get("written", 0) >= 2
            return st if done and st.get("firewall_logs", {}).get("written", 0) else None

        st = wait_for(counted, 5, "the logs' counters in the agent's status")
        assert st["flow_logs"]["flows"] >= 2 and st["flow_logs"]["dropped"] == 0
        assert st["firewall_logs"]["packets"] >= len(drops)


STREAM_SPORT = 40178


def test_an_offloaded_flow_record_holds_its_fast_path_share(gateway: dict[str, Any]) -> None:
    """A UDP stream (assured: a packet 2.5 s after the first reply) is offloaded and
    sends most of its packets through XDP; the conntrack flush ends it, and its record
    counts both paths: 0 < fastpath-packets <= packets, and the total is every packet
    the stream exchanged."""
    echo = gateway["services"]["udp_echo"]
    doc = document(interfaces={"data_plane": "xdp"}, logging={"flow_logs": True})
    flows = LOG_ROOT / GW.netns / "flow.jsonl"
    script = (
        "import socket,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
        f"s.settimeout(2);s.bind(('0.0.0.0',{STREAM_SPORT}));n=0\n"
        "for i in range(43):\n"
        f" s.sendto(b'k',('{echo['address']}',{echo['port']}));n+=s.recv(9)==b'k'\n"
        " time.sleep(2.5 if i == 1 else 0.05)\n"
        "print(n)"
    )
    with agent(GW.netns, doc):
        out = sh(WS, "python3", "-c", script)
        assert out.stdout.strip() == "43", out.stderr
        st = agent_status(GW.netns)
        assert st["offload"].get("offloaded_total", 0) >= 1, st["offload"]
        sh(GW.netns, "conntrack", "-F")

        def logged() -> dict[str, Any] | None:
            recs = [r for r in read_jsonl(flows) if r["srcport"] == STREAM_SPORT]
            return recs[0] if recs else None

        rec = wait_for(logged, 10, "the flow record of the offloaded stream")
    assert isinstance(rec["fastpath-packets"], int), rec
    assert 0 < rec["fastpath-packets"] <= rec["packets"] == 86, rec
    assert 0 < rec["fastpath-bytes"] < rec["bytes"]
    assert rec["packets-orig"] == rec["packets-reply"] == 43


DENY_HOST = (
    'drop http any any -> any any (msg:"denied host"; flow:established,to_server; '
    'http.host; content:"denied.example"; nocase; sid:7001; rev:1;)'
)


def test_inspection_drops_and_firewall_drops_are_one_stream(gateway: dict[str, Any]) -> None:
    """The built-in engine's drop of an HTTP request and the deny rule's drop of a ping
    land in the same ``firewall.jsonl``, each naming the rule that matched."""
    http, echo = gateway["services"]["http"], gateway["services"]["udp_echo"]
    doc = document(
        interfaces={"data_plane": "kernel"},
        logging={"firewall_logs": {"enabled": True, "rate_per_second": 20}},
        rules={"entries": [{"action": "deny", "proto": "icmp", "comment": "no ICMP out"}]},
        inspection={"enabled": True, "engine": "builtin", "fail_open": True,
                    "selectors": [{"proto": "tcp", "ports": [http["port"], http["port"]]}],
                    "rules": [DENY_HOST]},
    )  # fmt: skip
    firewall = LOG_ROOT / GW.netns / "firewall.jsonl"
    url = f"http://{http['address']}:{http['port']}/"
    with agent(GW.netns, doc):
        time.sleep(1)  # the engine binds its queue
        denied = sh(
            WS, "curl", "-s", "-m", "3", "-o", "/dev/null", "-H", "Host: denied.example", url
        )
        assert denied.returncode != 0
        assert sh(WS, "ping", "-c", "2", "-i", "0.2", "-W", "1", echo["address"]).returncode != 0

        def both() -> dict[str, dict[str, Any]] | None:
            by = {r["source"]: r for r in read_jsonl(firewall) if r["src_ip"] == GW.workload_ip}
            return by if {"builtin", "nftables"} <= by.keys() else None

        by = wait_for(both, 10, "the inspection drop and the firewall drop in one stream")
    assert (by["builtin"]["rule"], by["builtin"]["comment"]) == ("sid:7001", "denied host")
    assert by["builtin"]["event_type"] in ("alert", "drop")
    assert (by["builtin"]["dest_ip"], by["builtin"]["dest_port"]) == (http["address"], http["port"])
    assert (by["nftables"]["rule"], by["nftables"]["proto"]) == ("rules.entries[0]", "ICMP")


def test_xdp_deny_drops_are_firewall_records_naming_the_rule(gateway: dict[str, Any]) -> None:
    """With the XDP data plane the deny list drops the pings before netfilter (no NFLOG
    record can exist); the fast path's samples must put them in ``firewall.jsonl`` with
    the rule, and the agent's status counts them."""
    echo = gateway["services"]["udp_echo"]
    doc = document(
        interfaces={"data_plane": "xdp"},
        logging={"firewall_logs": {"enabled": True, "xdp_samples_per_second": 50}},
        rules={"entries": [
            {"action": "deny", "proto": "tcp", "ports": [25, 25], "comment": "no SMTP"},
            {"action": "deny", "proto": "icmp", "comment": "no ICMP out"},
        ]},
    )  # fmt: skip
    firewall = LOG_ROOT / GW.netns / "firewall.jsonl"
    with agent(GW.netns, doc):
        assert sh(WS, "ping", "-c", "3", "-i", "0.2", "-W", "1", echo["address"]).returncode != 0

        def denied() -> list[dict[str, Any]]:
            return [r for r in read_jsonl(firewall) if r["src_ip"] == GW.workload_ip]

        drops = wait_for(lambda: len(denied()) >= 3 and denied(), 10, "XDP deny records")
        st = agent_status(GW.netns)
    assert {(r["source"], r["rule"], r["comment"], r["proto"]) for r in drops} == {
        ("xdp", "rules.entries[1]", "no ICMP out", "ICMP")
    }
    assert all(r["dest_ip"] == echo["address"] and r["icmp_type"] == 8 for r in drops)
    assert st["offload"]["deny_samples"]["sampled"] >= 3, st["offload"]
