"""Port forwards in the lab, with real connections: a port range kept and one mapped
1:1 onto other ports, a source allow-list (the allowed internet source connects, another
one does not; a workload outside the list cannot hairpin either), and hairpin NAT (the
workload reaches its own service through the gateway's outside address, which the
service sees coming from the gateway's inside address)."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from perf.lab import TOPOLOGY, ns_exec
from perf.lab.topology import INET_SERVICE_IP
from tests.netns.helpers import agent, document, sh

GW = TOPOLOGY.gateway("a")
INET_LINK_IP = GW.inet_cidr.split("/")[0]  # cs-inet's own address on the outside link
SERVER_PORTS = (8100, 8101, 8102, 9200, 9201, 9202, 9300, 9400)
SERVER = """
import socket, sys, threading
def serve(s):
    while True:
        c, a = s.accept()
        c.sendall(f"{s.getsockname()[1]} {a[0]}".encode()); c.close()
for port in map(int, sys.argv[1:]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


@pytest.fixture
def server(lab: Any) -> Iterator[None]:
    """A TCP server in the workload on SERVER_PORTS answering "<its port> <peer>"."""
    argv = ns_exec(GW.workload_netns, "python3", "-c", SERVER, *map(str, SERVER_PORTS))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def connect(ns: str, port: int, source: str | None = None, address: str = GW.outside_ip) -> str:
    """What the service answered to a connection from ``ns`` (``""``: none in 2 s)."""
    bind = f", source_address=('{source}', 0)" if source else ""
    script = (
        "import socket\ntry:\n"
        f"  c = socket.create_connection(('{address}', {port}), timeout=2{bind})\n"
        "  print(c.recv(100).decode())\nexcept OSError:\n  print('')"
    )
    return sh(ns, "python3", "-c", script).stdout.strip()


def test_ranges_allow_lists_and_hairpin(server: None) -> None:
    inet, ws = TOPOLOGY.inet_netns, GW.workload_netns
    forwards = [
        {"proto": "tcp", "port": 8100, "port_end": 8102, "to_address": GW.workload_ip},
        {"proto": "tcp", "port": 8200, "port_end": 8202, "to_address": GW.workload_ip,
         "to_port": 9200},
        {"proto": "tcp", "port": 8300, "to_address": GW.workload_ip, "to_port": 9300,
         "allow_from": [f"{INET_SERVICE_IP}/32"]},
        {"proto": "tcp", "port": 8400, "to_address": GW.workload_ip, "to_port": 9400,
         "allow_from": [f"{INET_SERVICE_IP}/32", f"{GW.workload_ip}/32"]},
    ]  # fmt: skip
    with agent(GW.netns, document(port_forwards=forwards)):
        # a range kept: every port to the same port
        for port in (8100, 8101, 8102):
            assert connect(inet, port) == f"{port} {INET_LINK_IP}"
        # a range moved: 1:1
        for port in (8200, 8201, 8202):
            assert connect(inet, port) == f"{port + 1000} {INET_LINK_IP}"
        assert connect(inet, 8203) == ""  # past the range: nothing forwarded
        # allow_from: the listed source connects, the other is dropped
        assert connect(inet, 8300, source=INET_SERVICE_IP) == f"9300 {INET_SERVICE_IP}"
        started = time.monotonic()
        assert connect(inet, 8300) == ""
        assert time.monotonic() - started > 1.5  # dropped (a timeout), not refused
        assert counted("port_forward_sources", 'port_forwards[2].allow_from"') > 0

        # hairpin: the workload reaches its own service at the outside address, and the
        # service sees the gateway's inside address (the SNAT that brings replies back)
        assert connect(ws, 8201) == f"9201 {GW.inside_ip}"
        assert connect(ws, 8100) == f"8100 {GW.inside_ip}"
        assert connect(ws, 8400) == f"9400 {GW.inside_ip}"  # the workload is allowed here
        assert connect(ws, 8300) == ""  # and not here
        # the ruleset says so too: the hairpin DNAT and SNAT counted packets
        assert counted("prerouting_nat", 'port_forwards[1] hairpin"') > 0
        assert counted("postrouting_nat", 'comment "port forward hairpin"') > 0


def counted(chain: str, comment: str) -> int:
    """The packet counter of the rule of ``chain`` whose line holds ``comment``."""
    rules = sh(GW.netns, "nft", "list", "chain", "inet", "spectra", chain).stdout
    line = next(ln for ln in rules.splitlines() if comment in ln)
    found = re.search(r"counter packets (\d+) ", line)
    assert found, line
    return int(found.group(1))
