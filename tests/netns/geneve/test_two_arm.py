"""Two-arm GWLB end to end, driven by the agent from a document: workload -> simulator
(GENEVE) -> gateway (XDP decap, kernel NAT) -> internet, and back (reverse NAT, tc
re-encap with the stored header, checked byte for byte by the simulator); once a flow
is established the offloader puts it on the XDP fast path both ways (decap + NAT +
redirect; reverse NAT + re-encap + redirect to the GWLB), still byte-identical; stray
return traffic and GENEVE without the AWS options dropped with named counters; a lab
pcap that tshark dissects cleanly; health-check failover."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from perf.lab import INET_SERVICE_IP, TOPOLOGY, ns_exec
from perf.lab.gwlbsim import HEALTH_PORT, GwlbLab
from tests.netns.geneve.conftest import GATEWAYS, GWLB, gateway_counters
from tests.netns.helpers import agent_status, http_get_json, sh, wait_for
from xdp import Dataplane, Reason

OUTSIDE_IPS = {gw.outside_ip for gw in TOPOLOGY.gateways}
OUTSIDE_OF = {gw.netns: gw.outside_ip for gw in TOPOLOGY.gateways}


def test_agent_reports_gwlb_rendered(gwlb_lab: GwlbLab) -> None:
    for netns in GATEWAYS:
        st = agent_status(netns)
        assert "gwlb" not in st["not_yet_rendered"]
        g = st["gwlb"]
        assert (g["enabled"], g["interface"], g["mode"]) == (True, "gwlb", "two-arm")
        assert g["hook"] in ("native", "generic") and g["hook_reason"]
        assert g["health_check"] == {
            "protocol": "tcp",
            "port": HEALTH_PORT,
            "path": "/healthz",
            "listening": True,
        }
        assert st["xdp_modes"], "the XDP fast path runs beside GWLB"
        assert g["fast_path"] is True, "two-arm XDP decap is linked to the fast path"


def test_curl_is_source_natted_by_a_gateway(gwlb_lab: GwlbLab) -> None:
    seen = set()
    for _ in range(6):
        data = http_get_json(GWLB.workload_netns, f"http://{INET_SERVICE_IP}/")
        seen.add(data["client_ip"])
    assert seen <= OUTSIDE_IPS and seen
    state = gwlb_lab.state()["counters"]
    assert state["matched"] > 0
    assert state["mismatched"] == 0, state["mismatch_examples"]


def test_flows_spread_over_both_gateways(gwlb_lab: GwlbLab) -> None:
    seen = set()
    for _ in range(20):
        seen.add(http_get_json(GWLB.workload_netns, f"http://{INET_SERVICE_IP}/")["client_ip"])
        if seen == OUTSIDE_IPS:
            break
    assert seen == OUTSIDE_IPS


def test_iperf3_through_the_gwlb(gwlb_lab: GwlbLab) -> None:
    proc = sh(GWLB.workload_netns, "iperf3", "-c", INET_SERVICE_IP, "-t", "2", "-J", timeout=30)
    assert proc.returncode == 0, proc.stdout[-500:] + proc.stderr
    result = json.loads(proc.stdout)
    assert result["end"]["sum_received"]["bytes"] > 100_000
    state = gwlb_lab.state()["counters"]
    assert state["mismatched"] == 0, state["mismatch_examples"]
    for netns in GATEWAYS:
        c = gateway_counters(netns)
        assert c["DROP_ENCAP_ERROR"] == 0 and c["DROP_MALFORMED"] == 0


def test_iperf3_through_the_gwlb_is_offloaded_both_ways(gwlb_lab: GwlbLab) -> None:
    """The established iperf3 flow leaves the kernel: forward packets are NATed and
    redirected by the fast path after decap, replies re-encapsulated by it; the
    simulator still finds every returned header byte-identical."""
    before = {netns: fast_path_counters(netns) for netns in GATEWAYS}
    matched0 = gwlb_lab.state()["counters"]["matched"]
    proc = sh(GWLB.workload_netns, "iperf3", "-c", INET_SERVICE_IP, "-t", "3", "-J", timeout=30)
    assert proc.returncode == 0, proc.stdout[-500:] + proc.stderr
    assert json.loads(proc.stdout)["end"]["sum_received"]["bytes"] > 100_000
    grown = {
        netns: {k: v - before[netns][k] for k, v in fast_path_counters(netns).items()}
        for netns in GATEWAYS
    }
    owner = max(GATEWAYS, key=lambda n: grown[n][Reason.REDIRECT.name])
    # Data segments forward, ACKs back: both directions mostly on the fast path.
    offload = {n: agent_status(n)["offload"] for n in GATEWAYS}
    assert grown[owner][Reason.REDIRECT.name] > 1000, (grown, offload)
    assert grown[owner][Reason.REDIRECT_GWLB.name] > 100, grown
    assert grown[owner][Reason.DROP_GWLB_ENCAP.name] == 0, grown
    wait_for(lambda: agent_status(owner)["offload"]["offloaded_total"] >= 1, 5, "offload")
    state = gwlb_lab.state()["counters"]
    assert state["mismatched"] == 0, state["mismatch_examples"]
    assert state["matched"] - matched0 > grown[owner][Reason.REDIRECT_GWLB.name] // 2


def test_udp_flow_is_offloaded_and_keeps_returning(gwlb_lab: GwlbLab) -> None:
    """An assured GWLB UDP flow (a stream) is installed by the offloader (forward key
    on the GWLB interface, return entry flagged) and its replies keep coming back
    through the GWLB, now re-encapsulated by the fast path."""
    code = (
        "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.settimeout(3); s.connect(('{INET_SERVICE_IP}', 7));\n"
        "for line in sys.stdin:\n"
        "    s.send(line.strip().encode()); print(s.recv(100).decode(), flush=True)\n"
    )
    with subprocess.Popen(
        ns_exec(GWLB.workload_netns, sys.executable, "-c", code),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as echo:
        assert echo.stdin is not None and echo.stdout is not None
        echo.stdin.write("first\n")
        echo.stdin.flush()
        assert echo.stdout.readline().strip() == "first"
        ticks = iter(range(10**6))

        def offloaded() -> str | None:
            # a stream: conntrack marks UDP assured (what the offloader takes) at a
            # packet more than 2 s after the first reply
            n = next(ticks)
            if n % 5 == 0:
                echo.stdin.write(f"tick {n}\n")  # type: ignore[union-attr]
                echo.stdin.flush()  # type: ignore[union-attr]
                assert echo.stdout.readline().strip() == f"tick {n}"  # type: ignore[union-attr]
            return _gateway_offloading_udp_echo()

        owner = wait_for(offloaded, 15, "the gateway offloading the echo")
        before = fast_path_counters(owner)
        for n in range(5):
            echo.stdin.write(f"again {n}\n")
            echo.stdin.flush()
            assert echo.stdout.readline().strip() == f"again {n}"
        after = fast_path_counters(owner)
        echo.stdin.close()
        assert echo.wait(timeout=10) == 0
    assert after[Reason.REDIRECT.name] - before[Reason.REDIRECT.name] >= 5
    assert after[Reason.REDIRECT_GWLB.name] - before[Reason.REDIRECT_GWLB.name] >= 5
    # status.json follows the offloader within a poll interval
    wait_for(lambda: agent_status(owner)["offload"]["gwlb_offloaded"] >= 1, 5, "GWLB offload")
    state = gwlb_lab.state()["counters"]
    assert state["mismatched"] == 0, state["mismatch_examples"]


def _gateway_offloading_udp_echo() -> str | None:
    """The gateway whose fast-path table holds the echo flow (UDP to port 7), keyed on
    its GWLB interface, with the return entry flagged."""
    for netns in GATEWAYS:
        dp = Dataplane.adopt(netns)
        try:
            entries = dp.flows()
            gwlb_ifindex = dp.gwlb_ifindex()
        finally:
            dp.close()
        forward = [k for k, _ in entries if (k.proto, k.dport, k.ifindex) == (17, 7, gwlb_ifindex)]
        back = [e for k, e in entries if (k.proto, k.sport) == (17, 7) and e.gwlb]
        if forward and back:
            return netns
    return None


def fast_path_counters(netns: str) -> dict[str, int]:
    """Packets per xdp_gateway reason, from the gateway's pinned maps."""
    dp = Dataplane.adopt(netns)
    try:
        return {name: c["packets"] for name, c in dp.counters()["reasons"].items()}
    finally:
        dp.close()


def test_stray_return_traffic_is_dropped_with_a_named_counter(gwlb_lab: GwlbLab) -> None:
    netns = GATEWAYS[0]
    before = gateway_counters(netns)
    unknown_before = gwlb_lab.state()["counters"]["unknown_flow"]
    # Toward the workload from an internet source, for a flow no GWLB packet announced:
    # the gateway must not originate it into the GWLB.
    stray = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW); "
        "from scapy.layers.inet import IP, UDP; "
        f"p = bytes(IP(src='{INET_SERVICE_IP}', dst='{GWLB.workload_ip}') "
        "/ UDP(sport=53, dport=40999)); "
        f"[s.sendto(p, ('{GWLB.workload_ip}', 0)) for _ in range(3)]"
    )
    # The appliance's own packets (from its GWLB-side address) are not GWLB traffic.
    own = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"[s.sendto(b'x', ('{GWLB.workload_ip}', 9999)) for _ in range(3)]"
    )
    for code in (stray, own):
        proc = sh(netns, sys.executable, "-c", code)
        assert proc.returncode == 0, proc.stderr
    after = gateway_counters(netns)
    assert after["DROP_NO_FLOW"] - before["DROP_NO_FLOW"] == 3
    assert after["ENCAP_PASS_LOCAL"] - before["ENCAP_PASS_LOCAL"] >= 3
    assert after["ENCAP"] == before["ENCAP"]
    assert gwlb_lab.state()["counters"]["unknown_flow"] == unknown_before


def test_geneve_without_the_aws_options_is_dropped_with_a_named_counter(
    gwlb_lab: GwlbLab,
) -> None:
    target = GWLB.targets[0]
    before = gateway_counters(target.netns)
    code = (
        "import socket; from scapy.contrib.geneve import GENEVE, GeneveOptions; "
        "from scapy.layers.inet import IP, UDP; "
        "opts = [GeneveOptions(classid=0x0108, type=1, length=2, data=b'E' * 8), "
        "GeneveOptions(classid=0x0108, type=3, length=1, data=b'C' * 4)]; "
        f"inner = IP(src='{GWLB.workload_ip}', dst='{INET_SERVICE_IP}') "
        "/ UDP(sport=40123, dport=7); "
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.bind(('{target.sim_ip}', 0)); "
        "p = bytes(GENEVE(proto=0x0800, options=opts) / inner); "
        f"[s.sendto(p, ('{target.gateway_ip}', 6081)) for _ in range(4)]"
    )
    proc = sh(GWLB.netns, sys.executable, "-c", code)
    assert proc.returncode == 0, proc.stderr
    after = wait_for(
        lambda: (
            c
            if (c := gateway_counters(target.netns))["DROP_MISSING_OPTION"]
            >= before["DROP_MISSING_OPTION"] + 4
            else None
        ),
        10,
        "four DROP_MISSING_OPTION",
    )
    assert after["DROP_MISSING_OPTION"] - before["DROP_MISSING_OPTION"] == 4
    assert after["DECAP"] == before["DECAP"]


def test_pcap_of_the_gwlb_links_dissects_cleanly(gwlb_lab: GwlbLab, tmp_path: Path) -> None:
    pcap = tmp_path / "gwlb.pcap"
    with _tcpdump(GWLB.netns, pcap, "udp port 6081"):
        seen = set()
        for _ in range(8):
            seen.add(http_get_json(GWLB.workload_netns, f"http://{INET_SERVICE_IP}/")["client_ip"])
    total = _tshark_count(pcap, "geneve")
    malformed = _tshark_count(pcap, "_ws.malformed || _ws.expert.severity == error")
    assert total >= 8 * 6  # at least SYN, SYN-ACK, request, response, FIN, ACK per curl
    assert malformed == 0
    fields = subprocess.run(
        [
            "tshark",
            "-r",
            str(pcap),
            "-Y",
            "geneve",
            "-T",
            "fields",
            "-e",
            "geneve.option.class",
            "-e",
            "http.response.code",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "0x0108" in fields or "264" in fields
    assert "200" in fields  # replies went back through GENEVE


def test_failed_health_check_moves_new_flows_to_the_other_gateway(gwlb_lab: GwlbLab) -> None:
    down, up = GWLB.targets
    with _health_blocked(down.netns):
        gwlb_lab.wait_health(down.az, False)
        flows_before = gwlb_lab.state(settle=0)["targets"][down.az]["flows"]
        seen = {
            http_get_json(GWLB.workload_netns, f"http://{INET_SERVICE_IP}/")["client_ip"]
            for _ in range(8)
        }
        assert seen == {OUTSIDE_OF[up.netns]}
        assert gwlb_lab.state()["targets"][down.az]["flows"] == flows_before
    gwlb_lab.wait_health(down.az, True)
    seen = set()
    for _ in range(20):
        seen.add(http_get_json(GWLB.workload_netns, f"http://{INET_SERVICE_IP}/")["client_ip"])
        if OUTSIDE_OF[down.netns] in seen:
            break
    assert OUTSIDE_OF[down.netns] in seen


# -- helpers -----------------------------------------------------------------------------


@contextmanager
def _health_blocked(netns: str) -> Iterator[None]:
    """Drop the health checks to ``netns`` (a table of the test's own, removed after)."""
    rules = (
        "table inet gwlb_test { chain input { type filter hook input priority -10; "
        f"tcp dport {HEALTH_PORT} drop ; }} ; }}"
    )
    proc = sh(netns, "nft", rules)
    assert proc.returncode == 0, proc.stderr
    try:
        yield
    finally:
        sh(netns, "nft", "delete", "table", "inet", "gwlb_test")


@contextmanager
def _tcpdump(netns: str, pcap: Path, bpf_filter: str) -> Iterator[None]:
    with subprocess.Popen(
        ns_exec(
            netns, "tcpdump", "-i", "any", "--immediate-mode", "-U", "-w", str(pcap), bpf_filter
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as dump:
        assert dump.stderr is not None
        lines = [dump.stderr.readline() for _ in range(1)]
        while "listening on" not in lines[-1] and lines[-1] and len(lines) < 5:
            lines.append(dump.stderr.readline())  # "listening on any, ...": capturing
        assert "listening on" in lines[-1], lines
        try:
            yield
        finally:
            dump.terminate()
            dump.wait(timeout=10)


def _tshark_count(pcap: Path, display_filter: str) -> int:
    proc = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", display_filter],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return len([ln for ln in proc.stdout.splitlines() if ln.strip()])
