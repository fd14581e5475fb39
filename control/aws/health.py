"""The instance's own data-path health: what makes it eligible to lead its AZ.

Local checks first, each cheap and each a reason by itself: the inside and outside
links are up, the kernel forwards IPv4, and the agent's nftables table is loaded (a
gateway without it would forward untranslated). Then, when ``aws.health.probe`` names a
``host:port``, a TCP connection to it out of the outside interface within
``timeout_s``: the instance reaches the internet through its own outside path (the
subnet's route table, the internet gateway). Last, with ``aws.health.forward_probes``,
the verdict of the forward probe (:mod:`control.aws.probe`): a workload's packet through
the forward chain and source NAT, counted on the leader. The last failure's reason is
kept for status; the lease's hysteresis decides what a failure means.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

from control.aws.probe import ForwardProbe
from control.nftables import TABLE, table_present
from nfq.engine.reject import checksum

FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")  # the reading task's namespace


def _link_up(ifname: str) -> bool:
    """Whether ``ifname`` is up in this network namespace (netlink, not sysfs: sysfs
    shows the namespace it was mounted in)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return False
        state = ipr.get_links(found[0])[0].get_attr("IFLA_OPERSTATE")
    return state in ("UP", "UNKNOWN")


class DataPathHealth:
    """A :class:`~control.aws.lease.HealthCheck`: ``True`` when this instance can forward."""

    def __init__(
        self,
        inside: str,
        outside: str,
        probe: str | None = None,
        timeout_s: float = 1.0,
        interval_s: float = 0.0,
        *,
        link_up: Callable[[str], bool] = _link_up,
        table_loaded: Callable[[], bool] = table_present,
        forwarding: Path = FORWARDING,
        forward: ForwardProbe | None = None,
    ) -> None:
        self.inside, self.outside = inside, outside
        self.probe, self.timeout_s, self.interval_s = probe, timeout_s, interval_s
        self._link_up, self._table_loaded, self._forwarding = link_up, table_loaded, forwarding
        self.forward = forward  # runs on its own thread; only its verdict is read here
        self.last_failure: str | None = None
        self._checked_at: float | None = None

    def __call__(self) -> bool:
        """The data path's health, checked at most every ``interval_s``
        (``aws.health.interval_s``); in between, the last result."""
        now = time.monotonic()
        if self._checked_at is None or now - self._checked_at >= self.interval_s:
            self.last_failure = self._failure()
            self._checked_at = now
        return self.last_failure is None

    def _failure(self) -> str | None:
        for ifname in (self.inside, self.outside):
            if not self._link_up(ifname):
                return f"link {ifname} is down"
        if self._forwarding.read_text().strip() != "1":
            return "IPv4 forwarding is off"
        if not self._table_loaded():
            return f"nftables table inet {TABLE} is not loaded"
        if self.probe is not None:
            host, _, port = self.probe.rpartition(":")
            try:
                with socket.create_connection((host, int(port)), timeout=self.timeout_s):
                    pass
            except OSError as exc:
                return f"probe {self.probe}: {exc}"
        return None if self.forward is None else self.forward.failure()


def answers_ping(address: str, timeout_s: float = 0.2) -> bool:
    """Whether ``address`` answers one ICMP echo within ``timeout_s`` (RFC 792): the
    kernel of a lease holder answers it whether or not its agent runs, and a dead
    instance does not (raw socket: the agent has ``CAP_NET_RAW``)."""
    ident, seq = os.getpid() & 0xFFFF, random.randrange(0x10000)
    header = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    payload = b"spectra-lease"
    packet = struct.pack("!BBHHH", 8, 0, checksum(header + payload), ident, seq) + payload
    deadline = time.monotonic() + timeout_s
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
            sock.sendto(packet, (address, 0))
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                data, (src, _) = sock.recvfrom(1024)
                icmp = data[(data[0] & 0x0F) * 4 :]
                if src == address and len(icmp) >= 8:
                    kind, _, _, got_id, got_seq = struct.unpack("!BBHHH", icmp[:8])
                    if kind == 0 and (got_id, got_seq) == (ident, seq):
                        return True
    except OSError:  # a timeout, no route, or no raw socket: no answer
        return False
    return False
