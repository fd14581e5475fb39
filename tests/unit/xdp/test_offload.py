"""Offload decisions against fake conntrack and a fake flow table (no privileges)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from nfq.marks import CT_MARK_BYPASS, CT_MARK_GWLB, CT_MARK_INSPECT
from xdp.offload import (
    IPS_ASSURED,
    IPS_DST_NAT,
    IPS_DYING,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
    TCP_CONNTRACK_ESTABLISHED,
    CtFlow,
    CtTuple,
    Interface,
    Offloader,
    Timeouts,
    plan,
    why_not_offloadable,
)
from xdp.records import FLOW_F_CLOSING, FLOW_F_GWLB, FlowEntry, FlowKey

INSIDE = Interface(2, "02:00:00:00:00:02")
OUTSIDE = Interface(3, "02:00:00:00:00:03")
TIMEOUTS = Timeouts(tcp_established=432000, udp=30, udp_stream=120, icmp=30)
WS, INET, NAT = IPv4Address("10.0.1.10"), IPv4Address("198.51.100.10"), IPv4Address("203.0.113.2")
ESTABLISHED = IPS_SEEN_REPLY | IPS_ASSURED | IPS_SRC_NAT
FORWARDED = IPS_SEEN_REPLY | IPS_ASSURED | IPS_DST_NAT


def tcp(sport: int = 40000, nat_port: int = 40000, **kw: object) -> CtFlow:
    base = CtFlow(
        proto=6,
        orig=CtTuple(WS, INET, sport, 80),
        reply=CtTuple(INET, NAT, 80, nat_port),
        status=ESTABLISHED,
        tcp_state=TCP_CONNTRACK_ESTABLISHED,
        mark=0,
        timeout=432000,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


class FakeTable:
    def __init__(self) -> None:
        self.entries: dict[FlowKey, FlowEntry] = {}

    def add_flow(self, key: FlowKey, entry: FlowEntry) -> None:
        self.entries[key] = entry

    def delete_flow(self, key: FlowKey) -> bool:
        return self.entries.pop(key, None) is not None

    def flows(self) -> list[tuple[FlowKey, FlowEntry]]:
        return list(self.entries.items())


class FakeKernel:
    def __init__(self, flows: list[CtFlow]) -> None:
        self.flows = flows
        self.refreshed: list[tuple[CtFlow, int]] = []

    def conntrack(self) -> Iterable[CtFlow]:
        return list(self.flows)

    def refresh(self, ct: CtFlow, timeout: int) -> None:
        self.refreshed.append((ct, timeout))

    def next_hop_mac(self, dst: IPv4Address) -> str | None:
        return "02:00:00:00:00:aa" if dst == WS else "02:00:00:00:00:bb"


def offloader(flows: list[CtFlow], capacity: int = 1024) -> tuple[Offloader, FakeTable, FakeKernel]:
    table, kernel = FakeTable(), FakeKernel(flows)
    off = Offloader(table, kernel, INSIDE, OUTSIDE, capacity, timeouts=TIMEOUTS, idle_seconds=10)
    return off, table, kernel


def test_plan_uses_the_kernels_mapping_both_ways() -> None:
    (ok, oe), (bk, be) = plan(
        tcp(nat_port=61000), INSIDE, OUTSIDE, "02:00:00:00:00:bb", "02:00:00:00:00:aa"
    )
    assert ok == FlowKey(INSIDE.ifindex, WS, INET, 40000, 80, 6)
    assert (oe.new_saddr, oe.new_sport, oe.new_daddr, oe.new_dport) == (NAT, 61000, INET, 80)
    assert (oe.egress_ifindex, oe.src_mac, oe.dst_mac) == (
        OUTSIDE.ifindex,
        OUTSIDE.mac,
        "02:00:00:00:00:bb",
    )
    assert bk == FlowKey(OUTSIDE.ifindex, INET, NAT, 80, 61000, 6)
    assert (be.new_saddr, be.new_sport, be.new_daddr, be.new_dport) == (INET, 80, WS, 40000)
    assert (be.egress_ifindex, be.dst_mac) == (INSIDE.ifindex, "02:00:00:00:00:aa")


def test_plan_icmp_echo_rewrites_the_identifier() -> None:
    ct = CtFlow(1, CtTuple(WS, INET, 77, 0), CtTuple(INET, NAT, 1077, 0), ESTABLISHED, None, 0, 30)
    (ok, oe), (bk, be) = plan(ct, INSIDE, OUTSIDE, "02:00:00:00:00:bb", "02:00:00:00:00:aa")
    assert (ok.sport, ok.dport, oe.new_sport, oe.new_dport) == (77, 0, 1077, 0)
    assert (bk.sport, bk.dport, be.new_sport, be.new_dport) == (1077, 0, 77, 0)


@pytest.mark.parametrize(
    ("flow", "reason"),
    [
        (tcp(), None),
        (tcp(tcp_state=1), "not_established"),
        (tcp(status=IPS_SEEN_REPLY | IPS_SRC_NAT), "not_established"),
        (tcp(status=IPS_ASSURED | IPS_SRC_NAT), "unreplied"),
        (tcp(status=IPS_SEEN_REPLY | IPS_ASSURED), "not_nat"),
        # destination NAT (port forward, load balancer) and both (hairpin): offloadable,
        # with the same reasons as source NAT for what is not yet decided
        (tcp(status=FORWARDED), None),
        (tcp(status=FORWARDED | IPS_SRC_NAT), None),
        (tcp(status=FORWARDED, tcp_state=1), "not_established"),
        (tcp(status=IPS_DST_NAT | IPS_SEEN_REPLY), "not_established"),
        (tcp(status=IPS_DST_NAT | IPS_ASSURED), "unreplied"),
        (tcp(status=FORWARDED | IPS_DYING), "dying"),
        (tcp(status=FORWARDED, mark=CT_MARK_INSPECT), "under_inspection"),
        (tcp(status=FORWARDED, mark=CT_MARK_INSPECT | CT_MARK_BYPASS), None),
        (tcp(status=FORWARDED, timeout=432000 - 60), "idle"),
        (tcp(status=FORWARDED, mark=CT_MARK_GWLB), "gwlb"),  # GWLB: never destination-NATed
        (tcp(status=ESTABLISHED | IPS_DYING), "dying"),
        (tcp(mark=CT_MARK_INSPECT), "under_inspection"),
        (tcp(mark=CT_MARK_INSPECT | CT_MARK_BYPASS), None),
        (tcp(timeout=432000 - 60), "idle"),
        (tcp(timeout=298), None),  # data in flight: the kernel set the unacknowledged timeout
        (tcp(timeout=290), "idle"),
    ],
)
def test_offload_policy(flow: CtFlow, reason: str | None) -> None:
    assert why_not_offloadable(flow, TIMEOUTS, recent_seconds=5) == reason


def test_gwlb_dnat_stays_in_the_kernel_even_when_linked() -> None:
    ct = tcp(status=FORWARDED, mark=CT_MARK_GWLB)
    assert why_not_offloadable(ct, TIMEOUTS, 5, gwlb_linked=True) == "gwlb"
    assert why_not_offloadable(tcp(mark=CT_MARK_GWLB), TIMEOUTS, 5, gwlb_linked=True) is None


def test_the_dump_offloader_leaves_destination_nat_to_the_kernel() -> None:
    """The dump offloader (the perf baseline) places source-NATed flows only."""
    assert why_not_offloadable(tcp(status=FORWARDED), TIMEOUTS, 5, dnat=False) == "dnat"
    off, table, _ = offloader([tcp(status=FORWARDED), tcp(40001, 40001)])
    off.sync(now_ns=1_000)
    assert off.stats.offloaded == 1 and len(table.entries) == 2
    assert {k.sport for k in table.entries} == {40001, 80}


def test_installs_pair_then_keeps_conntrack_alive_from_last_seen() -> None:
    off, table, kernel = offloader([tcp()])
    off.sync(now_ns=1_000)
    assert len(table.entries) == 2 and off.stats.offloaded == 1
    off.sync(now_ns=2_000)
    assert kernel.refreshed == []  # no packet on the fast path yet
    out_key = next(k for k in table.entries if k.ifindex == INSIDE.ifindex)
    table.entries[out_key] = replace(table.entries[out_key], last_seen_ns=5_000, packets=1)
    off.sync(now_ns=6_000)
    assert kernel.refreshed == [(tcp(), TIMEOUTS.tcp_established)]
    off.sync(now_ns=7_000)
    assert len(kernel.refreshed) == 1  # only when last_seen moves


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        ("destroy", "conntrack_destroyed"),
        ("fin", "fin_rst"),
        ("idle", "idle"),
    ],
)
def test_pair_removed(mutate: str, reason: str) -> None:
    off, table, kernel = offloader([tcp()])
    off.sync(now_ns=1_000)
    key = next(iter(table.entries))
    now = 2_000
    if mutate == "destroy":
        kernel.flows = []
    elif mutate == "fin":
        table.entries[key] = replace(table.entries[key], flags=FLOW_F_CLOSING, last_seen_ns=1_500)
        kernel.flows = [tcp(tcp_state=4)]  # the kernel saw the FIN: FIN_WAIT
    else:
        table.entries[key] = replace(table.entries[key], last_seen_ns=1_500)
        now = 1_500 + 11 * 10**9
        kernel.flows = [tcp(timeout=432000 - 11)]  # and the kernel saw nothing either
    off.sync(now_ns=now)
    assert table.entries == {}
    assert off.stats.removed[reason] == 1
    off.sync(now_ns=now + 1)
    assert table.entries == {}  # not re-offloaded: closing/idle/destroyed


def test_full_table_leaves_new_flows_on_kernel_path_and_keeps_existing() -> None:
    flows = [tcp(sport=40000 + i, nat_port=50000 + i) for i in range(10)]
    off, table, _ = offloader(flows[:3], capacity=8)  # room for 3 pairs after headroom
    off.sync(now_ns=1)
    before = dict(table.entries)
    off.kernel.flows = flows  # type: ignore[attr-defined]
    off.sync(now_ns=2)
    assert table.entries == before
    assert off.stats.table_full == 7


def test_refused_flows_are_counted_once_not_every_sync() -> None:
    flows = [tcp(sport=40000 + i, nat_port=50000 + i) for i in range(10)]
    off, _, kernel = offloader(flows, capacity=8)  # room for 3 pairs
    for now in range(1, 6):
        off.sync(now_ns=now)
    assert off.stats.table_full == 7 and len(off.refused) == 7
    kernel.flows = flows[:3] + flows[4:]  # one refused flow's conntrack entry goes
    off.sync(now_ns=6)
    assert len(off.refused) == 6 and off.stats.table_full == 7
    kernel.flows = flows  # the same 5-tuple again: a new flow, counted again
    off.sync(now_ns=7)
    assert off.stats.table_full == 8
    kernel.flows = flows[3:]  # room again: refused flows are still retried each sync
    off.sync(now_ns=8)
    assert off.stats.active == 3 and off.stats.table_full == 8


class NoNeighbourKernel(FakeKernel):
    def __init__(self, flows: list[CtFlow]) -> None:
        super().__init__(flows)
        self.resolved = False

    def next_hop_mac(self, dst: IPv4Address) -> str | None:
        return super().next_hop_mac(dst) if self.resolved or dst == WS else None


def test_no_neighbour_counted_per_flow_and_offloaded_once_resolved() -> None:
    table, kernel = FakeTable(), NoNeighbourKernel([tcp(), tcp(sport=40001, nat_port=40001)])
    off = Offloader(table, kernel, INSIDE, OUTSIDE, 1024, timeouts=TIMEOUTS)
    for now in range(1, 11):  # ten 200 ms syncs
        off.sync(now_ns=now)
    assert off.stats.as_dict()["no_neighbour"] == 2
    kernel.resolved = True
    off.sync(now_ns=11)
    assert off.stats.active == 2 and off.refused == {}
    assert off.stats.as_dict()["no_neighbour"] == 2


def test_refused_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("xdp.offload.REFUSED_MEMORY", 3)
    flows = [tcp(sport=40000 + i, nat_port=50000 + i) for i in range(10)]
    off, _, _ = offloader(flows, capacity=8)
    off.sync(now_ns=1)
    off.sync(now_ns=2)
    assert len(off.refused) == 3
    # Past the bound a refusal is still counted (4 unremembered flows, twice).
    assert off.stats.table_full == 3 + 4 * 2


def test_restart_adopts_matching_pairs_and_deletes_orphans() -> None:
    off, table, kernel = offloader([tcp()])
    off.sync(now_ns=1)
    stray = FlowKey(INSIDE.ifindex, WS, INET, 1, 2, 17)
    table.entries[stray] = next(iter(table.entries.values()))
    counts_before = {k: v for k, v in table.entries.items() if k != stray}
    restarted = Offloader(table, kernel, INSIDE, OUTSIDE, 1024, timeouts=TIMEOUTS)
    restarted.sync(now_ns=2)
    assert restarted.stats.adopted == 1 and restarted.stats.offloaded == 0
    assert table.entries == counts_before
    assert restarted.stats.removed["orphan"] == 1


def _carry(table: FakeTable, ifindex: int, packets: int, octets: int, now: int) -> None:
    key = next(k for k in table.entries if k.ifindex == ifindex)
    e = table.entries[key]
    table.entries[key] = replace(
        e, packets=e.packets + packets, bytes=e.bytes + octets, last_seen_ns=now
    )


@pytest.mark.parametrize(
    ("flow", "policy", "packets", "frame", "handed_back"),
    [
        (tcp(), "kernel", 3_000, 1_514, True),  # 3,000 full frames/s: bulk
        (tcp(), "kernel", 3_000, 120, False),  # request/response sized segments
        (tcp(), "kernel", 1_000, 1_514, False),  # full frames, but a trickle
        (tcp(), "fast_path", 3_000, 1_514, False),  # policy keeps bulk in XDP
        (tcp(proto=17, tcp_state=None), "kernel", 3_000, 1_514, False),  # UDP stays
    ],
)
def test_bulk_tcp_is_handed_back_to_the_kernel_once(
    flow: CtFlow, policy: str, packets: int, frame: int, handed_back: bool
) -> None:
    table, kernel = FakeTable(), FakeKernel([flow])
    off = Offloader(
        table,
        kernel,
        INSIDE,
        OUTSIDE,
        1024,
        timeouts=TIMEOUTS,
        bulk_tcp=policy,  # type: ignore[arg-type]
    )
    second = 10**9
    off.sync(now_ns=1)  # installs
    off.sync(now_ns=2)  # opens the measurement window
    _carry(table, INSIDE.ifindex, packets, packets * frame, 2 + second // 2)
    _carry(table, OUTSIDE.ifindex, packets // 2, packets // 2 * 66, 2 + second // 2)
    off.sync(now_ns=2 + second)
    assert (table.entries == {}) is handed_back
    assert off.stats.removed["bulk_tcp"] == int(handed_back)
    off.sync(now_ns=3 + second)
    assert (table.entries == {}) is handed_back  # not offloaded again
    assert off.stats.as_dict()["bulk_tcp_in_kernel"] == int(handed_back)
    kernel.flows = []
    off.sync(now_ns=4 + second)
    assert off.kernel_only == set()  # forgotten with the conntrack entry


# -- two-arm GWLB flows --------------------------------------------------------------

GWLB_PORT = Interface(4, "02:00:00:00:00:04")


def gwlb_tcp(tcp_state: int = TCP_CONNTRACK_ESTABLISHED) -> CtFlow:
    return tcp(mark=CT_MARK_GWLB, nat_port=61000, tcp_state=tcp_state)


def test_gwlb_flow_stays_on_the_kernel_path_while_no_gwlb_is_linked() -> None:
    off, table, _ = offloader([gwlb_tcp()])
    off.sync(now_ns=1)
    assert table.entries == {}
    assert (off.stats.gwlb_kernel_path, off.stats.gwlb_offloaded) == (1, 0)


def test_linked_gwlb_flow_is_keyed_on_the_gwlb_interface_and_its_return_flagged() -> None:
    off, table, _ = offloader([gwlb_tcp(), tcp(sport=40001)])
    off.gwlb = GWLB_PORT
    off.sync(now_ns=1)
    out_key = FlowKey(GWLB_PORT.ifindex, WS, INET, 40000, 80, 6)
    back_key = FlowKey(OUTSIDE.ifindex, INET, NAT, 80, 61000, 6)
    out, back = table.entries[out_key], table.entries[back_key]
    assert (out.egress_ifindex, out.new_saddr, out.new_sport, out.gwlb) == (
        OUTSIDE.ifindex,
        NAT,
        61000,
        False,
    )
    # back to the GWLB interface, toward the kernel's next hop for the workload (the GWLB)
    assert (back.egress_ifindex, back.src_mac, back.dst_mac) == (
        GWLB_PORT.ifindex,
        GWLB_PORT.mac,
        "02:00:00:00:00:aa",
    )
    assert (back.new_daddr, back.new_dport, back.flags) == (WS, 40000, FLOW_F_GWLB)
    plain = table.entries[FlowKey(INSIDE.ifindex, WS, INET, 40001, 80, 6)]
    assert not plain.gwlb
    assert (off.stats.gwlb_offloaded, off.stats.gwlb_kernel_path, off.stats.active) == (1, 0, 2)


def test_gwlb_pairs_keep_the_keepalive_and_teardown_rules() -> None:
    off, table, kernel = offloader([gwlb_tcp()])
    off.gwlb = GWLB_PORT
    off.sync(now_ns=1)
    back_key = FlowKey(OUTSIDE.ifindex, INET, NAT, 80, 61000, 6)
    table.entries[back_key] = replace(table.entries[back_key], last_seen_ns=5)
    off.sync(now_ns=6)
    assert len(kernel.refreshed) == 1  # conntrack kept alive from the fast path
    table.entries[back_key] = replace(table.entries[back_key], flags=FLOW_F_GWLB | FLOW_F_CLOSING)
    kernel.flows = [gwlb_tcp(tcp_state=4)]  # the kernel saw the FIN: FIN_WAIT
    off.sync(now_ns=7)
    assert table.entries == {} and off.stats.removed["fin_rst"] == 1


def test_unlinking_the_gwlb_hands_its_flows_back_to_the_kernel() -> None:
    off, table, _ = offloader([gwlb_tcp(), tcp(sport=40001)])
    off.gwlb = GWLB_PORT
    off.sync(now_ns=1)
    off.gwlb = None
    off.sync(now_ns=2)
    assert [k.sport for k in table.entries if k.ifindex == INSIDE.ifindex] == [40001]
    assert len(table.entries) == 2
    assert off.stats.removed["gwlb_unlinked"] == 1
    assert off.stats.gwlb_kernel_path == 1


def test_restart_adopts_gwlb_pairs_only_while_linked() -> None:
    first, table, _ = offloader([gwlb_tcp()])
    first.gwlb = GWLB_PORT
    first.sync(now_ns=1)
    pinned = dict(table.entries)
    restarted, _, _ = offloader([gwlb_tcp()])
    restarted.table = table
    restarted.gwlb = GWLB_PORT
    restarted.sync(now_ns=2)
    assert (restarted.stats.adopted, table.entries) == (1, pinned)


def test_nat_port_use_is_counted_per_destination() -> None:
    other = IPv4Address("198.51.100.99")
    flows = [tcp(sport=40000 + i, nat_port=50000 + i) for i in range(4)]
    flows.append(tcp(sport=41000, orig=CtTuple(WS, other, 41000, 443)))
    flows.append(tcp(sport=41001, status=IPS_SEEN_REPLY | IPS_ASSURED))  # not translated
    off, _, _ = offloader(flows)
    off.sync(now_ns=1)
    status = off.stats.as_dict()
    assert status["nat_ports_busiest"] == 4
    assert status["nat_ports_top"] == [
        {"proto": 6, "nat_address": str(NAT), "destination": str(INET), "port": 80, "ports": 4},
        {"proto": 6, "nat_address": str(NAT), "destination": str(other), "port": 443, "ports": 1},
    ]
