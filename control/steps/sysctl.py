"""The sysctl step: IPv4 forwarding and the conntrack timeouts of ``nat.timeouts``."""

from __future__ import annotations

from pathlib import Path

from control.config import ConfigDocument
from control.steps.base import Host, StepBase

SYSCTL = Path("/proc/sys")

Sysctls = tuple[tuple[str, str], ...]


class SysctlStep(StepBase):
    name = "sysctl"

    @staticmethod
    def render(doc: ConfigDocument, host: Host) -> Sysctls:
        t = doc.nat.timeouts
        return (
            ("net/ipv4/ip_forward", "1"),
            ("net/netfilter/nf_conntrack_tcp_timeout_established", str(t.tcp_established)),
            ("net/netfilter/nf_conntrack_udp_timeout", str(t.udp)),
            ("net/netfilter/nf_conntrack_udp_timeout_stream", str(t.udp_stream)),
            ("net/netfilter/nf_conntrack_icmp_timeout", str(t.icmp)),
        )

    def apply(self, part: Sysctls) -> None:
        for key, value in part:
            (SYSCTL / key).write_text(value)
