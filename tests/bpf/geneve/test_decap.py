"""xdp_gwlb through BPF_PROG_TEST_RUN: every case of cases.py, checked against the
expected frame and against the Python reference model, plus the stored header."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from geneve import GeneveError, Gwlb, GwlbReason, InnerFlow, decapsulate
from geneve.dataplane import MAX_OPTIONS
from geneve.errors import (
    BadVersionError,
    MalformedError,
    MissingGwlbOptionError,
    TruncatedError,
    UnknownCriticalOptionError,
)
from tests.bpf.geneve.cases import CASES, CASES_BY_NAME, GWLB_IP, GWLB_SPORT, LOCAL_IP, GeneveCase
from xdp.reasons import XdpAction
from xdp.testrun import run

# How the reference model names each drop reason.
MODEL_ERRORS: dict[GwlbReason, type[GeneveError]] = {
    GwlbReason.DROP_TRUNCATED: TruncatedError,
    GwlbReason.DROP_BAD_VERSION: BadVersionError,
    GwlbReason.DROP_MALFORMED: MalformedError,
    GwlbReason.DROP_MISSING_OPTION: MissingGwlbOptionError,
    GwlbReason.DROP_CRITICAL_OPTION: UnknownCriticalOptionError,
}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(gwlb: Gwlb, case: GeneveCase) -> None:
    result = run(gwlb.program_fd("xdp_gwlb"), case.input_bytes())
    assert (result.action, case.reason) == (case.action, case.reason)
    counters = gwlb.counters()
    assert counters[case.reason.name]["packets"] == 1
    if case.action == XdpAction.PASS:
        assert result.data_out == case.expected_bytes(), Ether(result.data_out).summary()


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.reason in MODEL_ERRORS or c.inner is not None],
    ids=lambda c: c.name,
)
def test_reference_model_agrees(case: GeneveCase) -> None:
    ip = bytes(case.packet[IP])
    if case.inner is not None:
        assert decapsulate(ip, max_options=MAX_OPTIONS).inner == bytes(case.inner)
        return
    if case.name == "truncated_inner":
        flow = InnerFlow.parse(decapsulate(ip).inner)
        assert flow is None
        return
    with pytest.raises(MODEL_ERRORS[case.reason]):
        decapsulate(ip, max_options=MAX_OPTIONS)


def test_header_is_stored_byte_exact_under_the_symmetric_key(gwlb: Gwlb) -> None:
    case = CASES_BY_NAME["extra_noncritical_between"]
    run(gwlb.program_fd("xdp_gwlb"), case.input_bytes())
    model = decapsulate(bytes(case.packet[IP]))
    flow = InnerFlow.parse(model.inner)
    assert flow is not None
    stored = gwlb.maps.lookup(flow.key_bytes())
    assert stored is not None
    assert stored.header == model.header.raw
    assert (stored.gwlb_addr, stored.local_addr, stored.sport) == (GWLB_IP, LOCAL_IP, GWLB_SPORT)
    # the reply direction finds the same entry through the other dir bit
    assert flow.reversed().key_bytes(flow.key()[1]) == flow.key_bytes()


def test_ipv6_header_is_stored(gwlb: Gwlb) -> None:
    case = CASES_BY_NAME["inner_ipv6_to_kernel"]
    result = run(gwlb.program_fd("xdp_gwlb"), case.input_bytes())
    assert Ether(result.data_out).type == 0x86DD
    assert IPv6 in Ether(result.data_out)
    flow = InnerFlow.parse(bytes(case.packet[IPv6]))
    assert flow is not None and gwlb.maps.lookup(flow.key_bytes()) is not None


def test_reflect_mode_swaps_outer_and_transmits(gwlb: Gwlb) -> None:
    gwlb.mode = "one-arm-reflect"
    gwlb.configure(local_addr=LOCAL_IP)
    case = CASES_BY_NAME["aws_order_1_2_3_tcp"]
    result = run(gwlb.program_fd("xdp_gwlb"), case.input_bytes())
    assert result.action == XdpAction.TX
    out = Ether(result.data_out)
    sent = case.packet
    assert (out.src, out.dst) == (sent.dst, sent.src)
    assert (out[IP].src, out[IP].dst) == (LOCAL_IP, GWLB_IP)
    assert (out.sport, out.dport) == (GWLB_SPORT, 6081)
    # byte-identical GENEVE header and inner packet; checksums still valid
    assert result.data_out[34:] == case.input_bytes()[34:]
    assert out[IP].chksum == IP(bytes(out[IP].copy().__class__(bytes(out[IP])))).chksum
    assert gwlb.counters()["REFLECT"]["packets"] == 1
