"""XDP deny drops sampled into the ``deny_samples`` ring buffer (BPF_PROG_TEST_RUN): the
record names the rule and carries the packet's addresses, protocol and ports; the
per-CPU token bucket lets ``deny_sample_rate`` packets a second through and counts the
rest; rate 0 samples nothing."""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from tests.fixtures.packets import CLIENT, CLIENT_MAC, GW_INSIDE_MAC, SERVER
from xdp import Dataplane, DenyRule, libbpf
from xdp.deny_samples import DenySample
from xdp.maps import SampleBudgetC
from xdp.reasons import XdpAction
from xdp.testrun import run

CLOCK_MONOTONIC_COARSE = 6  # linux/time.h (not in Python's time module)
pytestmark = [pytest.mark.bpf, pytest.mark.timeout(60)]

RULES = (
    DenyRule(dst=IPv4Network("198.51.100.0/24")),  # rule 0: not these packets
    DenyRule(proto=17, ports=(53, 53)),  # rule 1
    DenyRule(proto=1),  # rule 2
)


@pytest.fixture
def sampling(dataplane: Dataplane) -> Iterator[Dataplane]:
    """One CPU (the bucket is per CPU), a fresh window on every CPU, rules loaded."""
    cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cpus)})
    fresh = (SampleBudgetC * libbpf.num_possible_cpus())()
    for b in fresh:
        b.window_ns = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)
    libbpf.map_update(dataplane.objects.map_fds["deny_sample_budget"], ctypes.c_uint32(0), fresh)
    dataplane.set_deny_rules(RULES)
    try:
        yield dataplane
    finally:
        dataplane.set_deny_sample_rate(0)
        os.sched_setaffinity(0, cpus)


def drop(dp: Dataplane, l4: Packet) -> None:
    frame = Ether(src=CLIENT_MAC, dst=GW_INSIDE_MAC) / IP(src=CLIENT, dst=SERVER) / l4
    assert run(dp.program_fd(), bytes(frame)).action == XdpAction.DROP


def test_a_sample_names_the_rule_and_the_packet(sampling: Dataplane) -> None:
    dp = sampling
    dp.set_deny_sample_rate(100)
    got: list[DenySample] = []
    reader = dp.deny_sample_reader(got.append)
    try:
        drop(dp, UDP(sport=40000, dport=53) / b"q")
        drop(dp, ICMP(type=8, code=0))
        assert reader.poll(0) == 2
    finally:
        reader.stop()
    udp, icmp = got
    gen = dp.deny.active_generation()
    assert (udp.rule, udp.deny_gen & 1, udp.proto, udp.sport, udp.dport) == (1, gen, 17, 40000, 53)
    assert (udp.src, udp.dst) == (IPv4Address(CLIENT), IPv4Address(SERVER))
    assert udp.pkt_len == 14 + 20 + 8 + 1
    assert (icmp.rule, icmp.proto, icmp.sport, icmp.dport) == (2, 1, 8, 0)


def test_the_rate_limits_samples_and_counts_the_rest(sampling: Dataplane) -> None:
    dp = sampling
    dp.set_deny_sample_rate(3)
    before = dp.deny_sample_counters()
    got: list[DenySample] = []
    reader = dp.deny_sample_reader(got.append)
    try:
        for port in range(10):
            drop(dp, UDP(sport=41000 + port, dport=53))
        reader.poll(0)
    finally:
        reader.stop()
    after = dp.deny_sample_counters()
    assert [s.sport for s in got] == [41000, 41001, 41002]
    assert after["sampled"] - before["sampled"] == 3
    assert after["suppressed"] - before["suppressed"] == 7
    assert after["ring_full"] == before["ring_full"]
    assert dp.counters()["deny_rules"][1]["packets"] == 10, "every drop still counted"


def test_rate_zero_samples_nothing(sampling: Dataplane) -> None:
    dp = sampling
    before = dp.deny_sample_counters()
    got: list[DenySample] = []
    reader = dp.deny_sample_reader(got.append)
    try:
        drop(dp, UDP(sport=40000, dport=53))
        assert reader.poll(0) == 0
    finally:
        reader.stop()
    assert not got and dp.deny_sample_counters() == before
