"""The sysctl step: IPv4 forwarding, every conntrack timeout of ``nat.timeouts`` and
the conntrack table size of ``nat.conntrack`` (see :mod:`control.steps.conntrack_capacity`).

Table size and hash buckets are host-wide: the kernel lets only the initial network
namespace write them.  An agent in another namespace (the lab) leaves them to the host
and says so in its status (``conntrack.sizing``); the timeouts are per namespace.

A one-arm NAT instance forwards out of the interface packets arrived on: it must not
answer them with ICMP redirects ("Disable source/destination checks" and NAT instance
AMI settings in the Amazon VPC user guide), so ``send_redirects`` is off for it.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control.config import ConfigDocument
from control.steps.base import Host, StepBase, StepContext
from control.steps.conntrack_capacity import (
    BUCKETS_KEY,
    MAX_KEY,
    ConntrackSizing,
    mem_total_bytes,
    read_counters,
)

log = logging.getLogger("spectra.control")

SYSCTL = Path("/proc/sys")
# The TCP states between the first SYN and the end of TIME_WAIT: nat.timeouts.tcp_transitory.
TRANSITORY = ("syn_sent", "syn_recv", "fin_wait", "close_wait", "last_ack", "time_wait")

Sysctls = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class SysctlPart:
    """Per-namespace sysctls, and the host-wide conntrack sizing resolved at apply."""

    sysctls: Sysctls
    sizing: ConntrackSizing


class SysctlStep(StepBase):
    name = "sysctl"

    def __init__(self, context: StepContext, proc: Path = Path("/proc")) -> None:
        super().__init__(context)
        self.proc = proc
        self.sizing: dict[str, Any] = {}

    @staticmethod
    def render(doc: ConfigDocument, host: Host) -> SysctlPart:
        t = doc.nat.timeouts
        redirects: Sysctls = ()
        if doc.one_arm_nat:
            inside = doc.interfaces.inside
            redirects = (
                ("net/ipv4/conf/all/send_redirects", "0"),
                (f"net/ipv4/conf/{inside}/send_redirects", "0"),
            )
        ct = doc.nat.conntrack
        prefix = "net/netfilter/nf_conntrack_"
        return SysctlPart(
            (
                *redirects,
                ("net/ipv4/ip_forward", "1"),
                (f"{prefix}tcp_timeout_established", str(t.tcp_established)),
                *((f"{prefix}tcp_timeout_{state}", str(t.tcp_transitory)) for state in TRANSITORY),
                (f"{prefix}udp_timeout", str(t.udp)),
                (f"{prefix}udp_timeout_stream", str(t.udp_stream)),
                (f"{prefix}icmp_timeout", str(t.icmp)),
            ),
            ConntrackSizing(
                None if ct.max == "auto" else ct.max,
                None if ct.buckets == "auto" else ct.buckets,
            ),
        )

    def apply(self, part: SysctlPart) -> None:
        root = self.proc / "sys"
        for key, value in part.sysctls:
            (root / key).write_text(value)
        size, buckets = part.sizing.resolve(mem_total_bytes(self.proc / "meminfo"))
        self.sizing = {"max": size, "buckets": buckets, "applied": True}
        try:
            # Buckets first: the kernel resizes the hash in place; max is only a limit.
            for name, wanted in ((BUCKETS_KEY, buckets), (MAX_KEY, size)):
                if int((root / name).read_text()) != wanted:
                    (root / name).write_text(str(wanted))
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            self._host_managed(exc)

    def _host_managed(self, exc: OSError) -> None:
        log.warning("conntrack size left to the host (not its first network namespace): %s", exc)
        self.sizing["applied"] = False

    def tick(self) -> dict[str, Any]:
        """The conntrack counters of this namespace and the sizing the document asked."""
        try:
            counters: dict[str, Any] = dict(read_counters(self.proc))
        except FileNotFoundError:  # nf_conntrack not loaded yet (nothing applied)
            return {}
        if self.sizing:
            counters["sizing"] = dict(self.sizing)
        return counters
