"""conntrackd keeps established, translated flows across a takeover.

Namespaces of this test's own (``cs-ha-<pid>-*``): a workload, two gateways A and B
(each an inside and an outside link, and a sync veth between them) and an internet
with a TCP and a UDP echo server. Both gateways are converged by the product's steps
(sysctl, nftables, conntrack sync) on one document: A and B source-NAT to a shared NAT
address, which, like the EC2 secondary private IP, lives on the leader. Traffic flows
through A; B's conntrackd must hold A's flows in its external cache. A dies (its links
go down), B becomes leader (commits), the address and the routes move to B, and the
same TCP socket and the same UDP flow carry on, seen by the internet from the same
public address and port. The NAT port range is chosen so the workload's ephemeral ports
must be translated: the port the internet sees surviving is the NAT mapping surviving.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import netns

from control.config import parse_document
from control.steps import Converger, KernelHost, StepContext
from control.steps.conntrack_sync import ConntrackSyncStep
from control.steps.nftables import NftablesStep
from control.steps.sysctl import SysctlStep
from tests.netns.helpers import sh, wait_for

PREFIX = f"cs-ha-{os.getpid()}"
WORKLOAD = "10.77.0.10"
SERVER = "198.51.100.10"
NAT_ADDRESS = "203.0.113.50"
NAT_PORTS = (20000, 20999)  # below the workload's ephemeral ports: they must be translated
TCP_PORT, UDP_PORT = 7000, 7001
MEMBERS = {"a": "169.254.77.1", "b": "169.254.77.2"}
INSIDE = {"a": ("10.77.1.1", "10.77.1.2"), "b": ("10.77.2.1", "10.77.2.2")}  # gateway, wl
OUTSIDE = {"a": ("192.0.2.1", "192.0.2.2"), "b": ("192.0.2.5", "192.0.2.6")}  # gateway, inet
DOC = parse_document(
    {
        "interfaces": {"inside": "inside", "outside": "outside", "data_plane": "kernel"},
        "nat": {"outside_addresses": [NAT_ADDRESS], "port_range": list(NAT_PORTS)},
        "ha": {
            "conntrack_sync": {
                "enabled": True,
                "interface": "sync",
                "members": [MEMBERS["a"], MEMBERS["b"]],
            }
        },
    }
)


def ns(name: str) -> str:
    return f"{PREFIX}-{name}"


def ip(*argv: str) -> None:
    proc = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=10, check=False)
    assert proc.returncode == 0, f"ip {' '.join(argv)}: {proc.stderr.strip()}"


@dataclass
class Gateway:
    name: str
    step: ConntrackSyncStep
    converger: Converger

    @property
    def netns(self) -> str:
        return ns(self.name)

    def run(self, fn: Any) -> Any:
        """Call ``fn`` with this thread inside the gateway's namespace."""
        netns.pushns(self.netns)
        try:
            return fn()
        finally:
            netns.popns()


@dataclass
class Echo:
    """TCP and UDP echo servers in the internet namespace; they record who they saw."""

    tcp: socket.socket
    udp: socket.socket
    tcp_peers: list[tuple[str, int]] = field(default_factory=list)
    udp_peers: list[tuple[str, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def serve(self) -> list[threading.Thread]:
        threads = [threading.Thread(target=f, daemon=True) for f in (self._tcp, self._udp)]
        for t in threads:
            t.start()
        return threads

    def _tcp(self) -> None:
        self.tcp.settimeout(0.2)
        while not self.stop.is_set():
            try:
                conn, peer = self.tcp.accept()
            except TimeoutError:
                continue
            self.tcp_peers.append(peer)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(0.2)
        with conn:
            while not self.stop.is_set():
                try:
                    data = conn.recv(4096)
                except TimeoutError:
                    continue
                if not data:
                    return
                conn.sendall(data)

    def _udp(self) -> None:
        self.udp.settimeout(0.2)
        while not self.stop.is_set():
            try:
                data, peer = self.udp.recvfrom(4096)
            except TimeoutError:
                continue
            self.udp_peers.append(peer)
            self.udp.sendto(data, peer)


def _veth(end: str, end_ns: str, peer: str, peer_ns: str) -> None:
    ip("link", "add", "name", end, "netns", end_ns, "type", "veth",
       "peer", "name", peer, "netns", peer_ns)  # fmt: skip


def _topology() -> None:
    for name in ("wl", "a", "b", "inet"):
        ip("netns", "add", ns(name))
        ip("-n", ns(name), "link", "set", "lo", "up")
    _veth("sync", ns("a"), "sync", ns("b"))
    for gw in ("a", "b"):
        link = f"to-{gw}"  # the workload's and the internet's link to gateway gw
        _veth(link, ns("wl"), "inside", ns(gw))
        _veth(link, ns("inet"), "outside", ns(gw))
        ip("-n", ns(gw), "addr", "add", f"{INSIDE[gw][0]}/30", "dev", "inside")
        ip("-n", ns("wl"), "addr", "add", f"{INSIDE[gw][1]}/30", "dev", link)
        ip("-n", ns(gw), "addr", "add", f"{OUTSIDE[gw][0]}/30", "dev", "outside")
        ip("-n", ns("inet"), "addr", "add", f"{OUTSIDE[gw][1]}/30", "dev", link)
        ip("-n", ns(gw), "addr", "add", f"{MEMBERS[gw]}/30", "dev", "sync")
        for dev in ("inside", "outside", "sync"):
            ip("-n", ns(gw), "link", "set", dev, "up")
        ip("-n", ns("wl"), "link", "set", link, "up")
        ip("-n", ns("inet"), "link", "set", link, "up")
        ip("-n", ns(gw), "route", "add", f"{WORKLOAD}/32", "via", INSIDE[gw][1])
        ip("-n", ns(gw), "route", "add", "default", "via", OUTSIDE[gw][1])
    ip("-n", ns("wl"), "addr", "add", f"{WORKLOAD}/32", "dev", "lo")
    ip("-n", ns("inet"), "addr", "add", f"{SERVER}/32", "dev", "lo")
    _lead("a")


def _lead(gw: str) -> None:
    """Where the NAT address lives and where both sides send: ``gw``."""
    ip("-n", ns(gw), "addr", "add", f"{NAT_ADDRESS}/32", "dev", "outside")
    ip("-n", ns("inet"), "route", "replace", f"{NAT_ADDRESS}/32", "via", OUTSIDE[gw][0])
    ip("-n", ns("wl"), "route", "replace", "default", "via", INSIDE[gw][0], "src", WORKLOAD)


@pytest.fixture
def pair() -> Iterator[dict[str, Gateway]]:
    """Both gateways converged on DOC; everything removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="cs-ha-"))  # short: conntrackd's UNIX socket path
    gateways: dict[str, Gateway] = {}
    try:
        _topology()
        for name in ("a", "b"):
            context = StepContext(f"cs-ha-{name}", base / name / "run", base / name / "log")
            step = ConntrackSyncStep(context)
            steps = [SysctlStep(context), NftablesStep(context), step]
            gw = Gateway(name, step, Converger(steps, KernelHost()))
            gw.run(lambda gw=gw: gw.converger.converge(DOC))
            gateways[name] = gw
        yield gateways
    finally:
        for gw in gateways.values():
            gw.run(lambda gw=gw: gw.step.apply(None))
        for name in ("wl", "a", "b", "inet"):
            subprocess.run(["ip", "netns", "del", ns(name)], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def echo() -> Iterator[Echo]:
    netns.pushns(ns("inet"))
    try:
        tcp = socket.create_server((SERVER, TCP_PORT))
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((SERVER, UDP_PORT))
    finally:
        netns.popns()
    servers = Echo(tcp, udp)
    threads = servers.serve()
    yield servers
    servers.stop.set()
    for t in threads:
        t.join(timeout=5)
    tcp.close()
    udp.close()


def _flows(listing: str) -> list[dict[str, list[str]]]:
    """Lines of ``conntrack -L`` / ``conntrackd -e``: the protocol and every key=value,
    in order (the original tuple's, then the reply tuple's)."""
    flows = []
    for line in listing.splitlines():
        words = line.split()
        if not words:
            continue
        fields: dict[str, list[str]] = {"proto": [words[0]], "flags": []}
        for word in words:
            key, eq, value = word.partition("=")
            if eq:
                fields.setdefault(key, []).append(value)
            else:
                fields["flags"].append(word)
        flows.append(fields)
    return flows


def _flow(flows: list[dict[str, list[str]]], proto: str, sport: int) -> dict[str, list[str]] | None:
    """The workload's ``proto`` flow from ``sport`` to the server, if listed."""
    for f in flows:
        if (
            f["proto"] == [proto]
            and f.get("src", [""])[0] == WORKLOAD
            and f.get("dst", [""])[0] == SERVER
            and f.get("sport", [""])[0] == str(sport)
        ):
            return f
    return None


def _in_namespace(pid: int, name: str) -> bool:
    return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{name}").st_ino


def _client() -> tuple[socket.socket, socket.socket]:
    netns.pushns(ns("wl"))
    try:
        tcp = socket.create_connection((SERVER, TCP_PORT), timeout=5)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.connect((SERVER, UDP_PORT))
    finally:
        netns.popns()
    return tcp, udp


def _tcp_echo(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection"
        got += chunk
    return got


def _udp_echo(sock: socket.socket, payload: bytes) -> bytes:
    """One datagram echoed (sent up to 3 times: UDP may lose one while neighbours resolve)."""
    sock.settimeout(1.0)
    for _ in range(3):
        sock.send(payload)
        try:
            return sock.recv(4096)
        except TimeoutError:
            continue
    raise AssertionError(f"no UDP echo of {payload!r}")


def _external_cache(gw: Gateway) -> list[dict[str, list[str]]]:
    return _flows(sh(gw.netns, "conntrackd", "-C", str(gw.step.paths.config), "-e").stdout)


def _nat_port(peers: list[tuple[str, int]], client_port: int) -> int:
    address, port = peers[-1]
    assert address == NAT_ADDRESS
    assert NAT_PORTS[0] <= port <= NAT_PORTS[1] and port != client_port  # translated
    return port


@pytest.mark.timeout(90)
def test_takeover_keeps_tcp_and_udp_flows_with_their_nat_mapping(
    pair: dict[str, Gateway], echo: Echo
) -> None:
    a, b = pair["a"], pair["b"]
    for gw in (a, b):
        assert gw.step.pid is not None and _in_namespace(gw.step.pid, gw.netns)
    assert a.step.become_leader().ok
    assert b.step.become_standby().ok

    tcp, udp = _client()
    with tcp, udp:
        assert _tcp_echo(tcp, b"before takeover") == b"before takeover"
        assert _udp_echo(udp, b"udp before") == b"udp before"
        tcp_port, udp_port = tcp.getsockname()[1], udp.getsockname()[1]
        nat_tcp = _nat_port(echo.tcp_peers, tcp_port)
        nat_udp = _nat_port(echo.udp_peers, udp_port)

        def replicated() -> list[dict[str, list[str]]] | None:
            flows = _external_cache(b)
            tcp_flow = _flow(flows, "tcp", tcp_port)
            if tcp_flow and "ESTABLISHED" in tcp_flow["flags"] and _flow(flows, "udp", udp_port):
                return flows
            return None

        flows = wait_for(replicated, 15, "A's TCP and UDP flows in B's external cache")
        ports = {p for f in flows for p in f.get("sport", []) + f.get("dport", [])}
        assert "3780" not in ports, "the sync traffic itself was replicated"
        assert b.step.caches()["external"] >= 2

        for dev in ("inside", "outside", "sync"):  # A dies
            ip("-n", a.netns, "link", "set", dev, "down")
        transition = b.step.become_leader()
        assert transition.ok, transition.summary()
        assert [c.flag for c in transition.commands] == ["-c", "-f", "-R", "-B"]
        assert transition.external_entries is not None and transition.external_entries >= 2
        status = b.step.status()
        assert status["role"] == "leader" and status["last_transition"]["ok"]

        # Committed into B's kernel with A's mapping: replies go to the same NAT port.
        kernel = _flows(sh(b.netns, "conntrack", "-L").stdout)
        for proto, port, nat_port in (("tcp", tcp_port, nat_tcp), ("udp", udp_port, nat_udp)):
            committed = _flow(kernel, proto, port)
            assert committed is not None, f"{proto} flow not committed into B's table"
            assert committed["dst"][1] == NAT_ADDRESS
            assert committed["dport"][1] == str(nat_port)

        ip("-n", a.netns, "addr", "del", f"{NAT_ADDRESS}/32", "dev", "outside")
        _lead("b")

        tcp.settimeout(10)
        for i in range(3):
            payload = f"after takeover {i}".encode()
            assert _tcp_echo(tcp, payload) == payload  # same socket: no reset, no new one
        assert _udp_echo(udp, b"udp after") == b"udp after"
        assert echo.tcp_peers == [(NAT_ADDRESS, nat_tcp)]  # one connection, ever
        assert echo.udp_peers[-1] == (NAT_ADDRESS, nat_udp)
        invalid = sh(b.netns, "nft", "list", "chain", "inet", "spectra", "forward").stdout
        assert "ct state invalid counter packets 0 bytes 0 drop" in invalid


@pytest.mark.timeout(60)
def test_tick_restarts_a_killed_conntrackd_which_resyncs(
    pair: dict[str, Gateway], echo: Echo
) -> None:
    b = pair["b"]
    tcp, udp = _client()
    with tcp, udp:
        assert _tcp_echo(tcp, b"ping") == b"ping"
        port = tcp.getsockname()[1]
        wait_for(lambda: _flow(_external_cache(b), "tcp", port), 15, "the flow in B's cache")

        old = b.step.pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: not b.step.status()["running"], 5, "conntrackd to die")
        assert b.step.paths.lock.exists()  # stale: a new daemon would refuse to start

        status = b.run(b.step.tick)  # the agent ticks inside its namespace
        assert status["running"] and status["restarts"] == 1
        assert status["pid"] not in (None, old) and _in_namespace(status["pid"], b.netns)
        assert status["external_cache_entries"] is not None
        # StartupResync: the new daemon asked A for its table again.
        wait_for(lambda: _flow(_external_cache(b), "tcp", port), 15, "the flow resynced")
        again = b.run(b.step.tick)
        assert again["pid"] == status["pid"] and again["restarts"] == 1
