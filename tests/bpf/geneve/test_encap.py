"""tc_gwlb_encap through BPF_PROG_TEST_RUN: replies find the stored header (two-arm
return and one-arm kernel path), unknown flows and expired headers are dropped with
named counters, the appliance's own packets pass."""

from __future__ import annotations

import time

import pytest
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from geneve import Gwlb, decapsulate
from geneve.testrun import TC_ACT_OK, TC_ACT_SHOT, run_tc
from tests.bpf.geneve.cases import (
    CASES_BY_NAME,
    GWLB_IP,
    GWLB_MAC,
    GWLB_SPORT,
    LOCAL_IP,
    LOCAL_MAC,
    SERVER,
    WORKLOAD,
)
from xdp.testrun import run

KERNEL_FRAME = Ether(src=LOCAL_MAC, dst=GWLB_MAC)  # what the kernel puts on the reply
# A configured idle timeout (seconds) short enough that ageing an entry past it works
# from the first second after boot.
SHORT_IDLE = 0.5


def _learn(gwlb: Gwlb, name: str = "aws_order_1_2_3_tcp") -> bytes:
    case = CASES_BY_NAME[name]
    run(gwlb.program_fd("xdp_gwlb"), case.input_bytes())
    return decapsulate(bytes(case.packet[IP])).header.raw


def test_two_arm_reply_is_reencapsulated_with_identical_header(gwlb: Gwlb) -> None:
    header = _learn(gwlb)
    reply = IP(src=SERVER, dst=WORKLOAD, ttl=63) / TCP(sport=80, dport=40000, flags="SA")
    result = run_tc(gwlb.program_fd("tc_gwlb_encap"), bytes(KERNEL_FRAME / reply))
    assert result.action == TC_ACT_OK
    out = Ether(result.data_out)
    assert (out.src, out.dst, out.type) == (LOCAL_MAC, GWLB_MAC, 0x0800)
    assert (out[IP].src, out[IP].dst) == (LOCAL_IP, GWLB_IP)
    assert (out[UDP].sport, out[UDP].dport, out[UDP].chksum) == (GWLB_SPORT, 6081, 0)
    # the outer IPv4 checksum is right: scapy recomputes it equal
    assert IP(bytes(out[IP])).chksum == out[IP].__class__(bytes(out[IP])).chksum
    raw_ip = bytes(out[IP])
    model = decapsulate(raw_ip)
    assert model.header.raw == header
    assert model.inner == bytes(reply)
    assert out[GENEVE].proto == 0x0800
    assert gwlb.counters()["ENCAP"]["packets"] == 1


def test_one_arm_forward_direction_uses_its_own_header(gwlb: Gwlb) -> None:
    header = _learn(gwlb)
    forwarded = IP(src=WORKLOAD, dst=SERVER, ttl=63) / TCP(sport=40000, dport=80, flags="S", seq=1)
    result = run_tc(gwlb.program_fd("tc_gwlb_encap"), bytes(KERNEL_FRAME / forwarded))
    assert result.action == TC_ACT_OK
    assert decapsulate(bytes(Ether(result.data_out)[IP])).header.raw == header


def test_unknown_flow_is_dropped_with_named_counter(gwlb: Gwlb) -> None:
    stray = IP(src=SERVER, dst=WORKLOAD) / UDP(sport=53, dport=40999)
    result = run_tc(gwlb.program_fd("tc_gwlb_encap"), bytes(KERNEL_FRAME / stray))
    assert result.action == TC_ACT_SHOT
    assert gwlb.drops() == {"DROP_NO_FLOW": 1}


def test_expired_header_is_not_used(gwlb: Gwlb) -> None:
    gwlb.idle_timeout = SHORT_IDLE
    gwlb.configure(local_addr=LOCAL_IP)
    _learn(gwlb)
    (entry,) = gwlb.maps.flows()
    gwlb.maps.age(entry.key, SHORT_IDLE + 0.1)
    reply = IP(src=SERVER, dst=WORKLOAD) / TCP(sport=80, dport=40000, flags="A")
    result = run_tc(gwlb.program_fd("tc_gwlb_encap"), bytes(KERNEL_FRAME / reply))
    assert result.action == TC_ACT_SHOT
    assert gwlb.drops() == {"DROP_FLOW_EXPIRED": 1}
    assert gwlb.maps.flows() == []


def test_idle_timeout_is_configurable(gwlb: Gwlb) -> None:
    gwlb.idle_timeout = 4 * SHORT_IDLE
    gwlb.configure(local_addr=LOCAL_IP)
    _learn(gwlb)
    (entry,) = gwlb.maps.flows()
    gwlb.maps.age(entry.key, 2 * SHORT_IDLE)  # expired under the shorter timeout above
    reply = IP(src=SERVER, dst=WORKLOAD) / TCP(sport=80, dport=40000, flags="A")
    assert run_tc(gwlb.program_fd("tc_gwlb_encap"), bytes(KERNEL_FRAME / reply)).action == (
        TC_ACT_OK
    )


def test_header_refreshed_after_the_clock_read_is_fresh(gwlb: Gwlb) -> None:
    """Another CPU may store last_seen after this one read the clock: not expired."""
    _learn(gwlb)
    (entry,) = gwlb.maps.flows()
    gwlb.maps.age(entry.key, -10)
    reply = IP(src=SERVER, dst=WORKLOAD) / TCP(sport=80, dport=40000, flags="A")
    result = run_tc(gwlb.program_fd("tc_gwlb_encap"), bytes(KERNEL_FRAME / reply))
    assert result.action == TC_ACT_OK
    assert gwlb.counters()["ENCAP"]["packets"] == 1


def test_ageing_past_boot_is_refused_not_clamped(gwlb: Gwlb) -> None:
    _learn(gwlb)
    (entry,) = gwlb.maps.flows()
    with pytest.raises(ValueError, match="since boot"):
        gwlb.maps.age(entry.key, time.monotonic() + 10)
    assert gwlb.maps.flows() == [entry]


def test_appliance_own_packets_pass_unencapsulated(gwlb: Gwlb) -> None:
    own = IP(src=LOCAL_IP, dst=GWLB_IP) / TCP(sport=8081, dport=33333, flags="SA")
    frame = bytes(KERNEL_FRAME / own)
    result = run_tc(gwlb.program_fd("tc_gwlb_encap"), frame)
    assert (result.action, result.data_out) == (TC_ACT_OK, frame)
    assert gwlb.counters()["ENCAP_PASS_LOCAL"]["packets"] == 1


def test_changed_header_replaces_the_stored_one(gwlb: Gwlb) -> None:
    _learn(gwlb, "aws_order_1_2_3_tcp")
    second = _learn(gwlb, "aws_order_3_2_1")  # another flow (UDP) -> second entry
    assert len(gwlb.maps.flows()) == 2
    assert second in {f.header for f in gwlb.maps.flows()}
