"""The lab's servers, which run in the internet namespace on :data:`INET_SERVICE_IP`:
the three of :mod:`perf.lab.echo`, iperf3 and sockperf. :class:`perf.lab.Lab` starts and
stops them; ``spectra lab status --json`` lists them under ``services``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from perf.lab.topology import INET_SERVICE_IP


@dataclass(frozen=True, slots=True)
class Server:
    """A server process in the internet namespace."""

    name: str
    proto: str
    port: int
    argv: tuple[str, ...]


def servers() -> tuple[Server, ...]:
    py, me = sys.executable, "perf.lab.echo"
    return (
        Server("http", "tcp", 80, (py, "-m", me, "http", INET_SERVICE_IP, "80")),
        Server("udp_echo", "udp", 7, (py, "-m", me, "udp-echo", INET_SERVICE_IP, "7")),
        Server("tcp_echo", "tcp", 7, (py, "-m", me, "tcp-echo", INET_SERVICE_IP, "7")),
        Server("iperf3", "tcp", 5201, ("iperf3", "-s", "-B", INET_SERVICE_IP, "-p", "5201")),
        Server(
            "sockperf", "udp", 11111, ("sockperf", "server", "-i", INET_SERVICE_IP, "-p", "11111")
        ),
    )
