"""One deny meaning on both data paths, with real traffic through cs-gw-a.

Deny rules apply to traffic the gateway forwards from the inside (the nftables rules sit
in the forward chain, matched on the inside interface); the XDP deny list must mean the
same, although it sees every packet of every interface it is attached to.  With a
``proto: icmp`` deny, on the kernel path and on the XDP path alike:

* the workload's ping to the internet is dropped (and XDP counts it, so it is the XDP
  list that dropped it there, not nftables behind it);
* a ping from the internet to the gateway passes (to the gateway itself, not forwarded);
* the workload's ping to the gateway's inside address passes;
* an ICMP "fragmentation needed" from the internet about the workload's UDP flow
  (RFC 1191 path MTU discovery) reaches the workload: inbound, related, forwarded to the
  inside, never subject to the deny list.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from perf.lab import TOPOLOGY, ns_exec
from tests.netns.helpers import agent, document, reset_gateway, sh
from xdp import Dataplane

GW = TOPOLOGY.gateway("a")
INET = TOPOLOGY.inet_netns

# In the workload: a raw ICMP socket, then one UDP datagram to the echo service; prints
# the source port, then the first "fragmentation needed" it receives (its inner source).
WORKLOAD_PROBE = """
import socket, sys
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
raw.settimeout(8)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.connect((sys.argv[1], int(sys.argv[2])))
udp.send(b"x" * 64)
print(udp.getsockname()[1], flush=True)
while True:
    data = raw.recv(2048)
    ihl = (data[0] & 15) * 4
    if data[ihl] == 3 and data[ihl + 1] == 4:
        inner = data[ihl + 8 :]
        print("frag-needed", socket.inet_ntoa(inner[12:16]), flush=True)
        break
"""

# In cs-inet: the router's "fragmentation needed" about the translated flow.
FRAG_NEEDED = """
import sys
from scapy.all import ICMP, IP, UDP, send
router, public, server, nat_port, port = sys.argv[1:6]
inner = IP(src=public, dst=server) / UDP(sport=int(nat_port), dport=int(port))
send(IP(src=router, dst=public) / ICMP(type=3, code=4, nexthopmtu=1280) / inner, verbose=0)
"""


@pytest.fixture
def gateway(lab: Any) -> Iterator[dict[str, Any]]:
    reset_gateway(GW.netns)
    yield lab.status()
    reset_gateway(GW.netns)


def ping(ns: str, address: str) -> bool:
    return sh(ns, "ping", "-c", "2", "-i", "0.2", "-W", "1", address).returncode == 0


def nat_port(sport: int) -> int:
    """The translated source port of the workload's UDP flow from ``sport`` (the reply
    tuple's destination port in conntrack)."""
    out = sh(GW.netns, "conntrack", "-L", "-p", "udp", "--orig-port-src", str(sport)).stdout
    (line,) = [line for line in out.splitlines() if f"sport={sport} " in line]
    ports = re.findall(r"\bdport=(\d+)", line)
    assert len(ports) == 2, line
    return int(ports[1])


def frag_needed_reaches_the_workload(status: dict[str, Any]) -> str:
    echo = status["services"]["udp_echo"]
    server, port = echo["address"], str(echo["port"])
    with subprocess.Popen(
        ns_exec(GW.workload_netns, sys.executable, "-c", WORKLOAD_PROBE, server, port),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    ) as probe:  # fmt: skip
        assert probe.stdout is not None
        sport = int(probe.stdout.readline())
        translated = nat_port(sport)
        router = GW.inet_cidr.split("/")[0]
        sent = sh(INET, sys.executable, "-c", FRAG_NEEDED, router, GW.outside_ip, server,
                  str(translated), port)  # fmt: skip
        assert sent.returncode == 0, sent.stderr
        out, err = probe.communicate(timeout=15)
    assert probe.returncode == 0, f"no frag-needed reached the workload: {err[-300:]}"
    return out.strip()


@pytest.mark.parametrize("data_plane", ["xdp", "kernel"])
def test_icmp_deny_means_forwarded_from_the_inside_on_both_paths(
    gateway: dict[str, Any], data_plane: str
) -> None:
    doc = document(
        interfaces={"data_plane": data_plane},
        rules={"entries": [{"action": "deny", "proto": "icmp", "comment": "no ICMP out"}]},
    )
    internet = TOPOLOGY.inet_service_cidr.split("/")[0]
    with agent(GW.netns, doc):
        assert not ping(GW.workload_netns, internet)  # forwarded from the inside: denied
        assert ping(INET, GW.outside_ip)  # to the gateway from outside: passes
        assert ping(GW.workload_netns, GW.inside_ip)  # to the gateway from inside: passes
        assert frag_needed_reaches_the_workload(gateway) == f"frag-needed {GW.workload_ip}"
        if data_plane == "xdp":
            dp = Dataplane.adopt(GW.netns)
            try:
                drops = dp.counters()["deny_rules"]
            finally:
                dp.close()
            assert drops[0]["packets"] >= 2  # the XDP list dropped the workload's pings
            assert set(drops) == {0}
