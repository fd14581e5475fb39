"""External tools the suites run (each suite lists its own in :data:`perf.suites.SUITES`),
and the Debian package that provides each one.

A missing tool is reported with its package (``apt-get install <pkg>``) before any
measurement starts, so a run never fails half-way through with the lab reconfigured.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable

DEBIAN_PACKAGES: dict[str, str] = {
    "ip": "iproute2",
    "trafgen": "netsniff-ng",
    "ethtool": "ethtool",
    "taskset": "util-linux",
    "chrt": "util-linux",
    "nft": "nftables",
    "sockperf": "sockperf",
    "iperf3": "iperf3",
    "ps": "procps",
    "iptables-restore": "iptables",
    "conntrack": "conntrack",
    "ssh": "openssh-client",
}


class ToolMissing(RuntimeError):
    """A command-line tool a suite needs is not installed."""


def missing(tools: Iterable[str]) -> list[str]:
    return [t for t in tools if shutil.which(t) is None]


def require(tools: Iterable[str]) -> None:
    """Raise :class:`ToolMissing` naming every absent tool and its Debian package."""
    absent = missing(tools)
    if absent:
        hints = ", ".join(f"{t} (Debian package {DEBIAN_PACKAGES.get(t, '?')})" for t in absent)
        pkgs = " ".join(sorted({DEBIAN_PACKAGES.get(t, t) for t in absent}))
        raise ToolMissing(f"missing tools: {hints}; install with: apt-get install {pkgs}")
