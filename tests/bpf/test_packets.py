"""Every packet case of tests/fixtures/packets.py through BPF_PROG_TEST_RUN: verdict,
output bytes, independent checksum check, flow counters and the reason counter."""

from __future__ import annotations

import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from tests.bpf.conftest import install
from tests.fixtures.packets import CASES, PacketCase, layer_diff
from xdp import Dataplane, Reason
from xdp.libbpf import LibbpfError
from xdp.reasons import XdpAction
from xdp.testrun import run

pytestmark = pytest.mark.bpf

CLOCK_MONOTONIC_COARSE = 6  # linux/time.h; the time module does not export it


def recomputed(frame: bytes) -> bytes:
    """The frame with IPv4 and L4 checksums recomputed by scapy (UDP 0 = none stays)."""
    pkt = Ether(frame)
    del pkt[IP].chksum
    for layer in (TCP, ICMP):
        if layer in pkt:
            del pkt[layer].chksum
    if UDP in pkt and pkt[UDP].chksum != 0:
        del pkt[UDP].chksum
    return bytes(pkt)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_packet_case(dataplane: Dataplane, case: PacketCase) -> None:
    install(dataplane, case)
    before_ns = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)  # the program's clock

    result = run(dataplane.program_fd(), case.input_bytes())

    assert result.action == case.action
    assert result.data_out == case.expected_bytes(), layer_diff(
        case.expected_bytes(), result.data_out
    )
    counters = dataplane.counters()["reasons"]
    nonzero = {name: c for name, c in counters.items() if c["packets"]}
    assert nonzero == {case.reason.name: {"packets": 1, "bytes": len(case.input_bytes())}}
    if case.action == XdpAction.REDIRECT:
        assert recomputed(result.data_out) == result.data_out, "checksums differ from scapy's"
        (flow,) = case.flows
        entry = dataplane.flow(flow.key)
        assert entry is not None
        assert (entry.packets, entry.bytes) == (1, len(case.input_bytes()))
        assert before_ns <= entry.last_seen_ns <= time.monotonic_ns()
    if case.deny_rule is not None:
        drops = dataplane.counters()["deny_rules"]
        assert drops == {case.deny_rule: {"packets": 1, "bytes": len(case.input_bytes())}}
    for key in case.closing_after:
        entry = dataplane.flow(key)
        assert entry is not None and entry.closing
    for flow in case.flows:
        if case.action != XdpAction.REDIRECT and flow.key not in case.closing_after:
            entry = dataplane.flow(flow.key)
            assert entry is not None and entry.packets == 0 and not entry.closing


def test_flow_marked_closing_by_fin_passes_the_next_packet(dataplane: Dataplane) -> None:
    from tests.fixtures.packets import TCP_OUT, case_by_name

    install(dataplane, case_by_name("tcp_fin_on_flow_passes_and_marks_closing"))
    fin = case_by_name("tcp_fin_on_flow_passes_and_marks_closing").input_bytes()
    ack = case_by_name("tcp_established_outbound_snat").input_bytes()

    assert run(dataplane.program_fd(), ack).action == XdpAction.REDIRECT
    assert run(dataplane.program_fd(), fin).action == XdpAction.PASS
    after = run(dataplane.program_fd(), ack)

    assert after.action == XdpAction.PASS
    assert after.data_out == ack
    assert dataplane.stats.read(Reason.PASS_FLOW_CLOSING) == (1, len(ack))
    entry = dataplane.flow(TCP_OUT.key)
    assert entry is not None and entry.packets == 1


def test_successive_runs_accumulate_flow_counters(dataplane: Dataplane) -> None:
    from tests.fixtures.packets import TCP_OUT, case_by_name

    case = case_by_name("tcp_established_outbound_snat")
    install(dataplane, case)

    actions = {run(dataplane.program_fd(), case.input_bytes()).action for _ in range(5)}

    assert actions == {XdpAction.REDIRECT}
    entry = dataplane.flow(TCP_OUT.key)
    assert entry is not None
    assert (entry.packets, entry.bytes) == (5, 5 * len(case.input_bytes()))
    assert dataplane.stats.read(Reason.REDIRECT) == (5, 5 * len(case.input_bytes()))


def test_repeat_reruns_on_the_rewritten_buffer(dataplane: Dataplane) -> None:
    """BPF_PROG_TEST_RUN repeat keeps the buffer: the 2nd run sees a translated frame."""
    from tests.fixtures.packets import case_by_name

    case = case_by_name("tcp_established_outbound_snat")
    install(dataplane, case)

    result = run(dataplane.program_fd(), case.input_bytes(), repeat=2)

    assert result.action == XdpAction.PASS
    assert dataplane.stats.read(Reason.REDIRECT)[0] == 1
    assert dataplane.stats.read(Reason.PASS_NO_FLOW)[0] == 1


def test_frames_shorter_than_ethernet_are_rejected_by_the_kernel(dataplane: Dataplane) -> None:
    with pytest.raises(LibbpfError, match=r"bpf_prog_test_run_opts.*errno 22"):
        run(dataplane.program_fd(), b"\x00" * 13)


@pytest.mark.parametrize("program", ["xdp_pass_peer", "xdp_drop_all"])
def test_helper_programs(dataplane: Dataplane, program: str) -> None:
    frame = CASES[0].input_bytes()
    expected = XdpAction.PASS if program == "xdp_pass_peer" else XdpAction.DROP
    assert run(dataplane.program_fd(program), frame).action == expected
