"""tc_gwlb_decap (the tc-ingress fallback) through BPF_PROG_TEST_RUN: on every packet
case it gives xdp_gwlb's verdict, counter, output frame and stored header."""

from __future__ import annotations

from ipaddress import IPv4Network

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


@pytest.mark.parametrize(
    ("allowed", "reason"),
    [
        (("172.16.1.0/30",), GwlbReason.DECAP),  # the GWLB's subnet
        (("172.16.1.1/32", "10.9.0.0/16"), GwlbReason.DECAP),
        (("172.16.2.0/24",), GwlbReason.DROP_SOURCE),  # another subnet: refused
    ],
)
def test_allowed_sources_at_xdp_and_tc(
    gwlb: Gwlb, allowed: tuple[str, ...], reason: GwlbReason
) -> None:
    gwlb.allowed_sources = tuple(IPv4Network(n) for n in allowed)
    gwlb.configure(local_addr=LOCAL_IP)
    assert sorted(map(str, gwlb.maps.sources())) == sorted(allowed)
    case = CASES_BY_NAME["aws_order_1_2_3_tcp"]
    assert case.packet[IP].src == GWLB_IP
    xdp_result = run(gwlb.program_fd("xdp_gwlb"), case.input_bytes())
    tc_result = run_tc(gwlb.program_fd("tc_gwlb_decap"), case.input_bytes())
    counters = gwlb.counters()
    assert counters[reason.name]["packets"] == 2
    dropped = reason == GwlbReason.DROP_SOURCE
    assert xdp_result.action == (XdpAction.DROP if dropped else XdpAction.PASS)
    assert tc_result.action == (TC_ACT_SHOT if dropped else TC_ACT_OK)
    assert (gwlb.maps.flows() == []) is dropped  # a refused sender stores nothing
    # back to "any source": the flag goes first, then the list empties
    gwlb.allowed_sources = ()
    gwlb.configure(local_addr=LOCAL_IP)
    assert gwlb.maps.sources() == []
    assert run(gwlb.program_fd("xdp_gwlb"), case.input_bytes()).action == XdpAction.PASS
