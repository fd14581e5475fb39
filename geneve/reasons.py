"""Verdict reasons of the GWLB programs, mirroring ``geneve/bpf/gwlb_reasons.h``.

A member's value is its slot in the per-CPU ``gwlb_stats`` map; the C name is
``"GWLB_" + member.name``.  tests/unit/geneve/test_reasons.py parses the header so the
two cannot drift (the pattern of xdp/reasons.py).
"""

from __future__ import annotations

from enum import IntEnum


class GwlbReason(IntEnum):
    """Why xdp_gwlb / tc_gwlb_decap / tc_gwlb_encap returned what they returned."""

    PASS_NOT_GENEVE = 0
    DECAP = 1
    DECAP_IPV6 = 2
    REFLECT = 3
    DROP_TRUNCATED = 4
    DROP_BAD_VERSION = 5
    DROP_MALFORMED = 6
    DROP_MISSING_OPTION = 7
    DROP_CRITICAL_OPTION = 8
    DROP_OAM = 9
    DROP_BAD_PROTO = 10
    DROP_OUTER_FRAGMENT = 11
    STORE_ERROR = 12
    ENCAP = 13
    ENCAP_PASS_LOCAL = 14
    ENCAP_PASS_OTHER = 15
    DROP_NO_FLOW = 16
    DROP_FLOW_EXPIRED = 17
    DROP_ENCAP_ERROR = 18
    DROP_DECAP_ERROR = 19
    DROP_SOURCE = 20

    @property
    def c_name(self) -> str:
        return f"GWLB_{self.name}"

    @property
    def is_drop(self) -> bool:
        return self.name.startswith("DROP_")


# Mirrors GWLB_STAT__MAX: the number of slots in ``gwlb_stats``.
GWLB_REASON_COUNT = 21
