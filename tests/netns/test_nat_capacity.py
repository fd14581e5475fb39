"""NAT capacity with real traffic: the outside address pool, port exhaustion counted,
source-port randomisation, every NAT timeout applied, conntrack sizing left to the host
in a non-initial network namespace.

Namespaces of this test's own (``ct-cap-<pid>-*``): a workload, a gateway converged by
the product's sysctl and nftables steps, and an internet with a TCP listener whose
backlog holds the connections open.  With a port range of ``PORTS`` ports and two
outside addresses chosen per connection, ``2 * PORTS`` concurrent connections to one
destination succeed and the next one fails, counted as ``insert_failed`` (the kernel
found no free translated tuple for it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import netns

from control.config import parse_document
from control.steps import Converger, KernelHost, StepContext
from control.steps.nftables import NftablesStep
from control.steps.sysctl import TRANSITORY, SysctlStep

PREFIX = f"ct-cap-{os.getpid()}"
WORKLOAD, SERVER, PORT = "10.78.0.10", "198.51.100.20", 7100
POOL = ("203.0.113.60", "203.0.113.61")
PORTS = 8
RANGE = (20000, 20000 + PORTS - 1)


def ns(name: str) -> str:
    return f"{PREFIX}-{name}"


def ip(*argv: str) -> None:
    proc = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=10, check=False)
    assert proc.returncode == 0, f"ip {' '.join(argv)}: {proc.stderr.strip()}"


def _topology() -> None:
    for name in ("wl", "gw", "inet"):
        ip("netns", "add", ns(name))
        ip("-n", ns(name), "link", "set", "lo", "up")
    ip("link", "add", "name", "gw", "netns", ns("wl"), "type", "veth",
       "peer", "name", "inside", "netns", ns("gw"))  # fmt: skip
    ip("link", "add", "name", "gw", "netns", ns("inet"), "type", "veth",
       "peer", "name", "outside", "netns", ns("gw"))  # fmt: skip
    ip("-n", ns("gw"), "addr", "add", "10.78.1.1/30", "dev", "inside")
    ip("-n", ns("wl"), "addr", "add", "10.78.1.2/30", "dev", "gw")
    ip("-n", ns("gw"), "addr", "add", "192.0.2.1/30", "dev", "outside")
    ip("-n", ns("inet"), "addr", "add", "192.0.2.2/30", "dev", "gw")
    for address in POOL:
        ip("-n", ns("gw"), "addr", "add", f"{address}/32", "dev", "outside")
    for name, dev in (("gw", "inside"), ("gw", "outside"), ("wl", "gw"), ("inet", "gw")):
        ip("-n", ns(name), "link", "set", dev, "up")
    for address in POOL:
        ip("-n", ns("inet"), "route", "add", f"{address}/32", "via", "192.0.2.1")
    ip("-n", ns("wl"), "addr", "add", f"{WORKLOAD}/32", "dev", "lo")
    ip("-n", ns("wl"), "route", "add", "default", "via", "10.78.1.1", "src", WORKLOAD)
    ip("-n", ns("gw"), "route", "add", f"{WORKLOAD}/32", "via", "10.78.1.2")
    ip("-n", ns("gw"), "route", "add", "default", "via", "192.0.2.2")
    ip("-n", ns("inet"), "addr", "add", f"{SERVER}/32", "dev", "lo")


class Gateway:
    """The gateway namespace converged by the product's steps on a document."""

    def __init__(self, base: Path) -> None:
        context = StepContext("ct-cap", base / "run", base / "log")
        self.sysctl = SysctlStep(context)
        self.converger = Converger([self.sysctl, NftablesStep(context)], KernelHost())

    def run(self, fn: Any) -> Any:
        netns.pushns(ns("gw"))
        try:
            return fn()
        finally:
            netns.popns()

    def converge(self, nat: dict[str, Any]) -> None:
        interfaces = {"inside": "inside", "outside": "outside", "data_plane": "kernel"}
        doc = parse_document({"interfaces": interfaces, "nat": nat})
        self.run(lambda: self.converger.converge(doc))
        self.run(lambda: subprocess.run(["conntrack", "-F"], capture_output=True, check=False))

    def counters(self) -> dict[str, Any]:
        counters: dict[str, Any] = self.run(self.sysctl.tick)
        return counters


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    base = Path(tempfile.mkdtemp(prefix="ct-cap-"))
    try:
        _topology()
        yield Gateway(base)
    finally:
        for name in ("wl", "gw", "inet"):
            subprocess.run(["ip", "netns", "del", ns(name)], capture_output=True, check=False)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A listener that never accepts: completed handshakes wait in its backlog."""
    netns.pushns(ns("inet"))
    try:
        server = socket.create_server((SERVER, PORT), backlog=256)
    finally:
        netns.popns()
    with server:
        yield server


def _connect(timeout: float, sport: int = 0) -> socket.socket | None:
    """A TCP connection from the workload to the server, or None if it timed out."""
    netns.pushns(ns("wl"))
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    finally:
        netns.popns()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((WORKLOAD, sport))
    sock.settimeout(timeout)
    try:
        sock.connect((SERVER, PORT))
    except OSError:
        sock.close()
        return None
    return sock


def _translated_ports(listener: socket.socket, count: int) -> list[int]:
    """The source ports the internet saw on the next ``count`` connections."""
    listener.settimeout(2)
    ports = []
    for _ in range(count):
        conn, (_addr, port) = listener.accept()
        conn.close()
        ports.append(port)
    return ports


def test_two_addresses_carry_twice_the_connections_and_exhaustion_is_counted(
    gateway: Gateway, listener: socket.socket
) -> None:
    pool = {"outside_addresses": list(POOL), "address_selection": "connection"}
    gateway.converge({**pool, "port_range": list(RANGE), "timeouts": {"tcp_transitory": 45}})
    held = []
    try:
        for i in range(2 * PORTS):
            sock = _connect(timeout=3)
            assert sock is not None, f"connection {i + 1} of {2 * PORTS} failed"
            held.append(sock)
        assert gateway.counters()["insert_failed"] == 0
        assert _connect(timeout=1.5) is None, "one more than the pool holds got through"
        counters = gateway.counters()
        assert counters["insert_failed"] >= 1
        assert counters["count"] >= 2 * PORTS
    finally:
        for sock in held:
            sock.close()
    nf = Path("/proc/sys/net/netfilter")
    for state in TRANSITORY:
        value = gateway.run(lambda s=state: (nf / f"nf_conntrack_tcp_timeout_{s}").read_text())
        assert int(value) == 45, state
    # Not the first network namespace: the table size is the host's to set, and said so.
    sizing = counters["sizing"]
    assert sizing["applied"] is False and counters["max"] > 0


def test_one_address_carries_only_the_port_range(gateway: Gateway, listener: socket.socket) -> None:
    gateway.converge({"outside_addresses": [POOL[0]], "port_range": list(RANGE)})
    held = []
    try:
        for _ in range(PORTS):
            sock = _connect(timeout=3)
            assert sock is not None
            held.append(sock)
        assert _connect(timeout=1.5) is None
        assert gateway.counters()["insert_failed"] >= 1
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("random_fully", [False, True])
def test_random_fully_randomises_source_ports(
    gateway: Gateway, listener: socket.socket, random_fully: bool
) -> None:
    gateway.converge({"outside_addresses": [POOL[0]], "random_fully": random_fully})
    sports = list(range(41000, 41010))
    held = [_connect(timeout=3, sport=p) for p in sports]
    try:
        assert all(held)
        seen = _translated_ports(listener, len(sports))
    finally:
        for sock in held:
            if sock is not None:
                sock.close()
    kept = len(set(seen) & set(sports))
    if random_fully:
        assert kept <= 2, f"fully-random kept {kept} of 10 source ports"
    else:
        assert kept == len(sports), "without fully-random a free source port is kept"
