"""Many concurrent NATed UDP flows made of real packets, in three namespaces of its own.

``<prefix>-cl`` (the workload: one address, a raw socket sending from incrementing
source ports) -> ``<prefix>-gw`` (a gateway: ``inside``/``outside`` veths, forwarding;
the caller translates, with the product's agent or :meth:`FlowLab.masquerade`) ->
``<prefix>-srv`` (the internet: :data:`DESTINATIONS` on its loopback, and a
reflector that answers each packet asking for it, ``b"R"``, and swallows the others).

A flow is one (source port, destination) pair; packet 1 with a reply makes the
gateway's entry seen-reply, a packet more than 2 s later makes it assured (RFC 4787
§4.3 describes the NAT behaviour; the 2 s is the kernel's UDP stream rule), and more
packets keep it flowing. The veth peers get the lab's XDP_PASS program so the
gateway's native redirects into them are delivered (as :mod:`perf.lab.build` does).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

from pyroute2 import netns as pr_netns

from perf.lab.build import attach_peer_pass
from perf.lab.host import run_in

CLIENT_IP = "10.90.0.2"
INSIDE_IP = "10.90.0.1"
OUTSIDE_IP = "198.19.0.1"
SERVER_LINK_IP = "198.19.0.2"
DESTINATIONS = tuple(f"198.19.1.{i}" for i in range(1, 9))
DPORT = 7
FIRST_SPORT = 1024
PORTS_PER_DESTINATION = 65536 - FIRST_SPORT
ASK_REPLY, NO_REPLY = b"R", b"K"


@dataclass(frozen=True, slots=True)
class Flow:
    """One flow of the generator: its source port and destination."""

    sport: int
    daddr: str


def flows(count: int) -> list[Flow]:
    """``count`` distinct flows (source port major, so each destination gets a share)."""
    if count > PORTS_PER_DESTINATION * len(DESTINATIONS):
        raise ValueError(f"count={count}: at most {PORTS_PER_DESTINATION * len(DESTINATIONS)}")
    n = len(DESTINATIONS)
    return [Flow(FIRST_SPORT + i // n, DESTINATIONS[i % n]) for i in range(count)]


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """This thread in ``ns`` for the block (sockets made here stay in it)."""
    pr_netns.pushns(ns)
    try:
        yield
    finally:
        pr_netns.popns()


class FlowLab:
    """The three namespaces, built by :meth:`up` and removed by :meth:`down`."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.client, self.gateway, self.server = (f"{prefix}-{s}" for s in ("cl", "gw", "srv"))
        self._reflector: int | None = None

    def up(self) -> None:
        self.down()
        for ns in (self.client, self.gateway, self.server):
            pr_netns.create(ns)
            run_in(ns, "ip", "link", "set", "lo", "up")
        run_in(self.client, "ip", "link", "add", "gw0", "type", "veth", "peer", "name",
               "inside", "netns", self.gateway)  # fmt: skip
        run_in(self.gateway, "ip", "link", "add", "outside", "type", "veth", "peer", "name",
               "eth0", "netns", self.server)  # fmt: skip
        for ns, dev, cidr in (
            (self.client, "gw0", f"{CLIENT_IP}/24"),
            (self.gateway, "inside", f"{INSIDE_IP}/24"),
            (self.gateway, "outside", f"{OUTSIDE_IP}/24"),
            (self.server, "eth0", f"{SERVER_LINK_IP}/24"),
        ):
            run_in(ns, "ip", "addr", "add", cidr, "dev", dev)
            run_in(ns, "ip", "link", "set", dev, "up")
        for dst in DESTINATIONS:
            run_in(self.server, "ip", "addr", "add", f"{dst}/32", "dev", "lo")
        run_in(self.client, "ip", "route", "add", "default", "via", INSIDE_IP)
        run_in(self.gateway, "ip", "route", "add", "198.19.1.0/24", "via", SERVER_LINK_IP)
        run_in(self.server, "ip", "route", "add", "default", "via", OUTSIDE_IP)
        run_in(self.gateway, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for ns, dev in ((self.client, "gw0"), (self.server, "eth0")):
            run_in(ns, "ethtool", "-K", dev, "tx", "off")
            attach_peer_pass(ns, dev)
        # resolve both next hops once, so the first flows need no ARP round
        run_in(self.client, "ping", "-c1", "-W1", INSIDE_IP)
        run_in(self.server, "ping", "-c1", "-W1", OUTSIDE_IP)

    def masquerade(self) -> None:
        """Source NAT on ``outside`` without the product (tests of the offloader)."""
        run_in(self.gateway, "nft", "add table ip flowlab; add chain ip flowlab post "
               "{ type nat hook postrouting priority 100; }; add rule ip flowlab post "
               'oifname "outside" masquerade')  # fmt: skip

    def down(self) -> None:
        self.stop_reflector()
        present = set(pr_netns.listnetns())
        for ns in (self.client, self.gateway, self.server):
            if ns in present:
                pr_netns.remove(ns)

    # ---- traffic --------------------------------------------------------------------

    def start_reflector(self) -> None:
        """Fork a reflector into the server namespace: one UDP socket per destination."""
        with in_netns(self.server):
            socks = []
            for dst in DESTINATIONS:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
                s.bind((dst, DPORT))
                socks.append(s)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                _reflect(socks)
            finally:
                os._exit(0)
        for s in socks:
            s.close()
        self._reflector = pid

    def stop_reflector(self) -> None:
        if self._reflector is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._reflector, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._reflector, 0)
            self._reflector = None

    def sender(self) -> Sender:
        with in_netns(self.client):
            return Sender()


def _reflect(socks: Sequence[socket.socket]) -> None:
    import select

    for s in socks:
        s.setblocking(False)
    while True:
        ready, _, _ = select.select(socks, [], [])
        for s in ready:
            for _ in range(256):
                try:
                    data, peer = s.recvfrom(64)
                except BlockingIOError:
                    break
                if data[:1] == ASK_REPLY:
                    s.sendto(data, peer)


class Sender:
    """Raw IPv4 socket in the client namespace (the kernel fills the IP checksum);
    UDP checksum 0 (none), as RFC 768 allows."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self._src = IPv4Address(CLIENT_IP).packed
        self._dst = {d: IPv4Address(d).packed for d in DESTINATIONS}

    def packet(self, flow: Flow, payload: bytes) -> bytes:
        udp = struct.pack("!HHHH", flow.sport, DPORT, 8 + len(payload), 0) + payload
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         self._src, self._dst[flow.daddr])  # fmt: skip
        return ip + udp

    def send(self, batch: Sequence[Flow], payload: bytes, pps: float) -> None:
        """One packet per flow of ``batch``, paced at ``pps``."""
        self.send_stamped(batch, payload, pps, {}, set())

    def send_stamped(
        self,
        batch: Sequence[Flow],
        payload: bytes,
        pps: float,
        sent: dict[int, int],
        stamp: set[int],
    ) -> None:
        """:meth:`send`, noting in ``sent`` when (monotonic ns) each index of ``stamp``
        left."""
        sendto = self.sock.sendto
        start = time.monotonic()
        for i, flow in enumerate(batch):
            while True:
                try:
                    sendto(self.packet(flow, payload), (flow.daddr, 0))
                    break
                except OSError:  # ENOBUFS: the qdisc is full for a moment
                    time.sleep(0.001)
            if i in stamp:
                sent[i] = time.monotonic_ns()
            if i % 256 == 255:
                ahead = start + (i + 1) / pps - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)

    def close(self) -> None:
        self.sock.close()
