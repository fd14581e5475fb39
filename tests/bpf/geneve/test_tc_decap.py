"""tc_gwlb_decap (the tc-ingress fallback) through BPF_PROG_TEST_RUN: on every packet
case it gives xdp_gwlb's verdict, counter, output frame and stored header."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP
from scapy.layers.l2 import Ether

from geneve import Gwlb, GwlbReason
from geneve.testrun import TC_ACT_OK, TC_ACT_SHOT, run_tc
from tests.bpf.geneve.cases import CASES, CASES_BY_NAME, GWLB_IP, LOCAL_IP, GeneveCase
from xdp.reasons import XdpAction
from xdp.testrun import run

TC_ACTION = {XdpAction.PASS: TC_ACT_OK, XdpAction.DROP: TC_ACT_SHOT}
TC_ACT_REDIRECT = 7


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case_matches_xdp(gwlb: Gwlb, case: GeneveCase) -> None:
    result = run_tc(gwlb.program_fd("tc_gwlb_decap"), case.input_bytes())
    assert result.action == TC_ACTION[case.action]
    assert gwlb.counters()[case.reason.name]["packets"] == 1
    if case.action == XdpAction.PASS:
        assert result.data_out == case.expected_bytes(), Ether(result.data_out).summary()


@pytest.mark.parametrize("case", [c for c in CASES if c.inner is not None], ids=lambda c: c.name)
def test_stored_header_matches_xdp(gwlb: Gwlb, case: GeneveCase) -> None:
    run(gwlb.program_fd("xdp_gwlb"), case.input_bytes())
    by_xdp = {(f.key, f.header, f.gwlb_addr, f.local_addr, f.sport) for f in gwlb.maps.flows()}
    gwlb.maps.clear_flows()
    run_tc(gwlb.program_fd("tc_gwlb_decap"), case.input_bytes())
    by_tc = {(f.key, f.header, f.gwlb_addr, f.local_addr, f.sport) for f in gwlb.maps.flows()}
    assert by_tc == by_xdp and len(by_tc) == 1


def test_reflect_mode_redirects_back_with_swapped_outer(gwlb: Gwlb) -> None:
    gwlb.mode = "one-arm-reflect"
    gwlb.configure(local_addr=LOCAL_IP)
    case = CASES_BY_NAME["aws_order_1_2_3_tcp"]
    result = run_tc(gwlb.program_fd("tc_gwlb_decap"), case.input_bytes())
    assert result.action == TC_ACT_REDIRECT
    out = Ether(result.data_out)
    assert (out[IP].src, out[IP].dst) == (LOCAL_IP, GWLB_IP)
    assert result.data_out[34:] == case.input_bytes()[34:]
    assert gwlb.counters()[GwlbReason.REFLECT.name]["packets"] == 1
