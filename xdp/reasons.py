"""Verdict reasons of ``xdp_gateway``, mirroring ``xdp/bpf/reasons.h`` value for value.

A member's value is its index in the per-CPU ``stats`` map; the C name is
``"STAT_" + member.name``.  tests/bpf/test_reasons.py parses the header so the two
cannot drift.
"""

from __future__ import annotations

from enum import IntEnum


class Reason(IntEnum):
    """Why xdp_gateway returned what it returned (one ``stats`` slot each)."""

    PASS_NOT_IPV4 = 0
    PASS_TRUNCATED = 1
    PASS_MALFORMED = 2
    PASS_IP_OPTIONS = 3
    PASS_FRAGMENT = 4
    PASS_TTL = 5
    PASS_PROTO = 6
    PASS_ICMP_ERROR = 7
    PASS_ICMP_OTHER = 8
    PASS_VLAN = 9
    PASS_NO_FLOW = 10
    PASS_FLOW_CLOSING = 11
    PASS_TCP_FIN_RST = 12
    PASS_TCP_SYN = 13
    DROP_DENY = 14
    REDIRECT = 15
    REDIRECT_ERROR = 16
    PASS_IP_CSUM = 17
    PASS_GWLB_NO_HEADER = 18
    REDIRECT_GWLB = 19
    DROP_GWLB_ENCAP = 20

    @property
    def c_name(self) -> str:
        return f"STAT_{self.name}"


# Mirrors STAT__MAX: the number of slots in the ``stats`` map.
REASON_COUNT = 21


class XdpAction(IntEnum):
    """``enum xdp_action`` from linux/bpf.h."""

    ABORTED = 0
    DROP = 1
    PASS = 2
    TX = 3
    REDIRECT = 4
