"""The sysctl step: IPv4 forwarding and the conntrack timeouts of ``nat.timeouts``.

A one-arm NAT instance forwards out of the interface packets arrived on: it must not
answer them with ICMP redirects ("Disable source/destination checks" and NAT instance
AMI settings in the Amazon VPC user guide), so ``send_redirects`` is off for it."""

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
        redirects: Sysctls = ()
        if doc.one_arm_nat:
            inside = doc.interfaces.inside
            redirects = (
                ("net/ipv4/conf/all/send_redirects", "0"),
                (f"net/ipv4/conf/{inside}/send_redirects", "0"),
            )
        return (
            *redirects,
            ("net/ipv4/ip_forward", "1"),
            ("net/netfilter/nf_conntrack_tcp_timeout_established", str(t.tcp_established)),
            ("net/netfilter/nf_conntrack_udp_timeout", str(t.udp)),
            ("net/netfilter/nf_conntrack_udp_timeout_stream", str(t.udp_stream)),
            ("net/netfilter/nf_conntrack_icmp_timeout", str(t.icmp)),
        )

    def apply(self, part: Sysctls) -> None:
        for key, value in part:
            (SYSCTL / key).write_text(value)
