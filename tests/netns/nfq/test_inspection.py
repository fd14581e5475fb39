"""Both engines on real traffic through cs-gw-a (``inspect_any`` runs a test once with
the built-in engine and once with the real Suricata): HTTP Host and TLS SNI denials
(dropped + alerted), benign traffic, a domain deny list, a DNS query rule,
fail-open/fail-closed with the engine killed, a reload under load, the ICMP error, a
flow bypassed by a ``pass`` rule or by stream depth and then offloaded to XDP; and for
the built-in engine its own cases: an unsupported rule, its bypass counters."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from nfq.domains import DOMAIN_SID_BASE
from nfq.marks import CT_MARK_INSPECT
from nfq.policy import DomainList, InspectionPolicy
from perf.lab import INET_SERVICE_IP, ns_exec
from tests.netns.helpers import http_get_json, sh, wait_for
from tests.netns.nfq.conftest import GW, ROOT, WS, Engine, SuricataRun

RULES = (
    'drop http any any -> any any (msg:"denied host"; flow:established,to_server; '
    'http.host; content:"denied.example"; sid:1001; rev:2; classtype:policy-violation;)',
    'drop tls $HOME_NET any -> any 443 (msg:"denied sni"; flow:to_server; tls.sni; '
    'content:"blocked.example"; nocase; sid:1002;)',
    'alert dns any any -> any 53 (msg:"dns tracker"; dns.query; content:"tracker.example"; '
    "nocase; sid:1003;)",
)
URL = f"http://{INET_SERVICE_IP}/"


def policy(**kw: Any) -> InspectionPolicy:
    return InspectionPolicy(rules=RULES, stream_depth=65536, **kw)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return sh(WS, "curl", "-s", "-m", "3", *args)


def category(engine: Engine) -> str:
    """classtype policy-violation as each engine reports it (Suricata: its description)."""
    return (
        "Potential Corporate Privacy Violation"
        if isinstance(engine, SuricataRun)
        else ("policy-violation")
    )


def test_denied_http_host_is_dropped_and_alerted(inspect_any: Callable[..., Engine]) -> None:
    engine = inspect_any(policy())
    assert curl("-H", "Host: www.Denied.Example", URL).returncode != 0
    assert wait_for(lambda: engine.alert_sids().get(1001), 5, "alert 1001") == "blocked"
    alert = next(a for a in engine.alerts() if a["alert"]["signature_id"] == 1001)
    assert alert["http"]["hostname"] == "www.denied.example"
    assert alert["src_ip"] == "10.0.1.10" and alert["dest_port"] == 80
    assert alert["alert"]["category"] == category(engine) and alert["alert"]["rev"] == 2
    # benign traffic passes, translated as usual, and raises nothing
    seen = http_get_json(WS, URL)
    assert seen["client_ip"] == "203.0.113.2"
    assert set(engine.alert_sids()) == {1001}
    assert wait_for(lambda: engine.packets() > 5, 12, "packet counters (synced every 5 s)")


def test_denied_tls_sni_is_dropped_and_alerted(
    inspect_any: Callable[..., Engine], inet_server: Callable[..., None], tmp_path: Path
) -> None:
    received = tmp_path / "sink.txt"
    inet_server("tcp-sink", INET_SERVICE_IP, "443", str(received))
    engine = inspect_any(policy())

    def hello(sni: str) -> None:
        sh(WS, "timeout", "4", "openssl", "s_client", "-servername", sni, "-connect",
           f"{INET_SERVICE_IP}:443", timeout=10)  # fmt: skip

    hello("www.blocked.example")
    assert wait_for(lambda: engine.alert_sids().get(1002), 5, "alert 1002") == "blocked"
    alert = next(a for a in engine.alerts() if a["alert"]["signature_id"] == 1002)
    assert alert["tls"]["sni"] == "www.blocked.example" and alert["app_proto"] == "tls"
    hello("allowed.example")
    lines = wait_for(lambda: received.exists() and received.read_text().splitlines(), 10,
                     "both connections closed at the sink")  # fmt: skip
    wait_for(lambda: len(received.read_text().splitlines()) >= 2, 10, "second connection")
    sizes = sorted(
        (int(fields[0]), fields[1] if len(fields) > 1 else "")
        for fields in (row.split() for row in received.read_text().splitlines())
    )
    assert sizes[0][0] == 0, f"the denied ClientHello reached the server: {lines}"
    assert sizes[1][0] > 100 and sizes[1][1] == "16", "the allowed ClientHello did not arrive"


def test_domain_deny_list_drops_http_host_and_sni(inspect_any: Callable[..., Engine]) -> None:
    deny = DomainList(targets=(".denied.example",), generated_rules_type="DENYLIST")
    engine = inspect_any(InspectionPolicy(domain_lists=(deny,), stream_depth=65536))
    assert curl("-H", "Host: www.Denied.Example", URL).returncode != 0
    assert curl("-H", "Host: denied.example", URL).returncode != 0
    assert curl("-H", "Host: notdenied.example", URL).returncode == 0
    sids = wait_for(lambda: engine.alert_sids(), 5, "domain list alerts")
    assert set(sids.values()) == {"blocked"} and min(sids) > DOMAIN_SID_BASE
    hosts = {a["http"]["hostname"] for a in engine.alerts() if a.get("event_type") == "alert"}
    assert hosts == {"www.denied.example", "denied.example"}


def test_dns_query_rule_fires(
    inspect_any: Callable[..., Engine], inet_server: Callable[..., None]
) -> None:
    inet_server("dns", INET_SERVICE_IP, "53")
    engine = inspect_any(policy())
    script = (
        "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(3)\n"
        "q=b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00'"
        "+b''.join(bytes([len(p)])+p for p in b'www.Tracker.example'.split(b'.'))"
        "+b'\\x00\\x00\\x01\\x00\\x01'\n"
        f"s.sendto(q,('{INET_SERVICE_IP}',53));r=s.recv(512);print(r[:2].hex(),r[3]&15)"
    )
    out = sh(WS, sys.executable, "-c", script)
    assert out.stdout.split() == ["1234", "3"], out.stderr  # alert only: the answer came back
    assert wait_for(lambda: engine.alert_sids().get(1003), 5, "alert 1003") == "allowed"
    alert = next(a for a in engine.alerts() if a["alert"]["signature_id"] == 1003)
    assert alert["dns"]["query"][0]["rrname"] == "www.Tracker.example"


@pytest.mark.parametrize("fail_open", [True, False], ids=["fail-open", "fail-closed"])
def test_engine_killed(inspect_any: Callable[..., Engine], fail_open: bool) -> None:
    engine = inspect_any(policy(fail_open=fail_open))
    assert http_get_json(WS, URL)["client_ip"] == "203.0.113.2"
    engine.kill()
    ok = curl(URL).returncode == 0
    assert ok is fail_open, "fail-open must keep traffic flowing, fail-closed must block it"
    # an established flow is inspected too: UDP echo keeps/looses its replies alike
    script = (
        "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(0.5)\n"
        "n=0\n"
        "for i in range(5):\n"
        f" s.sendto(b'p',('{INET_SERVICE_IP}',7))\n"
        " try: n+=s.recv(9)==b'p'\n"
        " except TimeoutError: pass\n"
        "print(n)"
    )
    assert sh(WS, sys.executable, "-c", script).stdout.strip() == ("5" if fail_open else "0")


def test_rule_reload_under_load_loses_no_accepted_packet(
    inspect_any: Callable[..., Engine], tmp_path: Path
) -> None:
    rules = tmp_path / "extra.rules"
    rules.write_text('alert udp any any -> any 7 (msg:"echo v1"; content:"never-v1"; sid:2001;)\n')
    engine = inspect_any(InspectionPolicy(rules=RULES, rule_files=(rules,), stream_depth=0,
                                      fail_open=False))  # fmt: skip
    count = 6000
    script = (
        "import socket,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,1<<22);s.settimeout(3);got=set()\n"
        f"for i in range({count}):\n"
        f" s.sendto(b'%08d'%i,('{INET_SERVICE_IP}',7))\n"
        " if i%50==0: time.sleep(0.02)\n"
        "try:\n"
        f" while len(got)<{count}: got.add(s.recv(64))\n"
        "except TimeoutError: pass\n"
        "print(len(got))"
    )
    with subprocess.Popen(ns_exec(WS, sys.executable, "-c", script), stdout=subprocess.PIPE,
                          text=True) as sender:  # fmt: skip
        for v in range(2, 6):
            time.sleep(0.4)
            rules.write_text(f'alert udp any any -> any 7 (msg:"echo v{v}"; content:"never-v{v}"; '
                             f"sid:2001; rev:{v};)\n" + "".join(
                                 f'alert tcp any any -> any any (msg:"filler {n}"; content:"f{n}'
                                 f'xyz"; sid:{3000 + n};)\n' for n in range(300)))  # fmt: skip
            engine.reload()
        out, _ = sender.communicate(timeout=60)
    assert int(out.strip()) == count, f"lost {count - int(out.strip())} packets across reloads"
    # every request and every echo went through the engine (stats are written each second)
    wait_for(lambda: engine.packets() >= 2 * count, 12, "packet counters catching up")
    assert engine.rules_loaded() == len(RULES) + 301
    if not isinstance(engine, SuricataRun):
        stats = engine.stats()
        assert stats["reloads"] >= 2 and stats["reload_error"] is None


def test_unsupported_rule_is_rejected_with_sid_and_keyword(nat_gateway: dict[str, Any]) -> None:
    bad = 'alert http any any -> any any (msg:"x"; http.method; content:"GET"; sid:9001;)'
    proc = subprocess.run(
        ns_exec(GW, sys.executable, "-m", "nfq", "engine", "--rule", bad),
        capture_output=True, text=True, timeout=30, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
    )  # fmt: skip
    assert proc.returncode == 1
    assert "rule sid 9001" in proc.stderr and "unsupported keyword 'http.method'" in proc.stderr


def test_icmp_error_from_outside_cannot_bypass_an_inspected_flow(
    inspect_any: Callable[..., Engine],
) -> None:
    """An ICMP error carries the conntrack of the flow it quotes. The built-in engine
    bypasses protocols no rule looks at (ICMP here), Suricata may bypass too; that
    verdict must not end inspection of the quoted flow: the internet side could
    otherwise switch it off at will (the chain never saves a RELATED packet's mark)."""
    engine = inspect_any(policy())
    send = (
        "import socket,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "s.bind(('0.0.0.0',40999))\n"
        f"for _ in range(5): s.sendto(b'x'*32,('{INET_SERVICE_IP}',9)); time.sleep(0.2)"
    )
    assert sh(WS, sys.executable, "-c", send).returncode == 0  # cs-inet: port unreachable
    if isinstance(engine, SuricataRun):
        # 5 datagrams and 5 ICMP errors, all verdicted (counters synced every 5 s)
        wait_for(lambda: engine.packets() >= 10, 12, "the ICMP errors verdicted by Suricata")
    else:
        wait_for(
            lambda: engine.stats()["counters"].get("bypassed_no_rules", 0) >= 1,
            5, "the ICMP error verdicted by the engine",
        )  # fmt: skip
    assert ct_marks(9, "udp") == [CT_MARK_INSPECT], "the UDP flow must stay under inspection"


def ct_marks(dport: int, proto: str = "tcp") -> list[int]:
    out = sh(GW, "conntrack", "-L", "-p", proto, "--dport", str(dport)).stdout
    marks = []
    for line in out.splitlines():
        for field in line.split():
            if field.startswith("mark="):
                marks.append(int(field[5:]))
    return marks


def test_stream_depth_and_pass_rule_set_the_bypass_mark(inspect: Callable[..., Engine]) -> None:
    pol = InspectionPolicy(
        rules=(*RULES, 'pass tcp any any -> any 5201 (msg:"iperf trusted"; sid:1010;)'),
        stream_depth=4096,
    )
    engine = inspect(pol)
    # a 200 kB download passes the 4 kB depth: bypassed, the rest never reaches the queue
    assert curl("-o", "/dev/null", f"{URL}bytes/200000").returncode == 0
    assert 3 in ct_marks(80), ct_marks(80)
    counters = wait_for(
        lambda: (c := engine.stats().get("counters", {})).get("bypassed_depth", 0) >= 1 and c,
        5, "the status file (written each second)",
    )  # fmt: skip
    assert counters["packets"] < 60  # ~140 segments in the download, most never queued
    # a pass rule bypasses at the first packet of the flow (the SYN)
    proc = sh(WS, "iperf3", "-c", INET_SERVICE_IP, "-t", "1", timeout=20)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert wait_for(lambda: engine.stats()["counters"].get("bypassed_pass", 0) >= 1, 5, "pass")


def iperf_offloaded(engine: Engine, what: str) -> None:
    """An 8 s iperf3 upload with the XDP agent running: the bypass mark reaches the
    conntrack entries, the offloader takes the flow, and the bulk of the transfer never
    reaches the engine."""
    from tests.netns.helpers import agent, agent_status, document, reset_gateway

    try:
        iperf = ns_exec(WS, "iperf3", "-c", INET_SERVICE_IP, "-t", "8")
        with (
            agent(GW, document(interfaces={"data_plane": "xdp"})),
            subprocess.Popen(iperf, stdout=subprocess.PIPE, text=True) as client,
        ):
            wait_for(lambda: 3 in ct_marks(5201), 5, "bypass mark on the iperf3 flows")
            wait_for(
                lambda: agent_status(GW)["offload"].get("offloaded_total", 0) >= 1,
                8,
                f"offload of the {what} flow",
            )
            assert client.wait(timeout=20) == 0
        assert engine.packets() < 2000, engine.packets()  # gigabytes went through
    finally:
        reset_gateway(GW)


def test_passed_flow_is_offloaded_by_the_xdp_agent(inspect_any: Callable[..., Engine]) -> None:
    """A ``pass`` rule decides the flow at its first packet (Suricata 7: the pass applies
    to the whole flow, and the product renders it with ``bypass``); the verdict carries
    the bypass mark, the flow leaves the queue and the XDP offloader takes it."""
    pol = InspectionPolicy(
        rules=(*RULES, 'pass tcp any any -> any 5201 (msg:"iperf trusted"; sid:1010;)'),
    )
    engine = inspect_any(pol)
    iperf_offloaded(engine, "passed")
    if not isinstance(engine, SuricataRun):
        assert engine.stats()["counters"].get("bypassed_pass", 0) >= 1


def test_stream_depth_bypass_moves_the_flow_to_xdp(
    inspect_any: Callable[..., Engine],
) -> None:
    """Stream depth reached (Suricata: ``stream.bypass: yes``): the verdict carries
    the bypass mark (``nfq.bypass-mark``); the product's chain saves it in the conntrack mark,
    the flow leaves the queue and the XDP offloader takes it."""
    engine = inspect_any(InspectionPolicy(rules=RULES, stream_depth=4096))
    iperf_offloaded(engine, "bypassed")
