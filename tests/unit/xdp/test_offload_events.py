"""The event-driven offloader against a scripted conntrack and a fake flow table (no
privileges): installs from events, removals, keepalives on the wheel, resyncs, counts."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest

from nfq.marks import CT_MARK_INSPECT
from xdp import flowpack
from xdp.ctevents import CtEvent
from xdp.offload import (
    IPS_ASSURED,
    IPS_DST_NAT,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
    TCP_CONNTRACK_ESTABLISHED,
    CtFlow,
    CtTuple,
    Interface,
    Timeouts,
    flow_keys,
    plan,
)
from xdp.offload_events import EventOffloader, plan_packed
from xdp.records import FLOW_F_CLOSING, FLOW_F_DENY_TRANSLATED, FlowEntry, FlowKey

INSIDE = Interface(2, "02:00:00:00:00:02")
OUTSIDE = Interface(3, "02:00:00:00:00:03")
TIMEOUTS = Timeouts(tcp_established=350, udp=30, udp_stream=120, icmp=30)
WS, INET, NAT = IPv4Address("10.0.1.10"), IPv4Address("198.51.100.10"), IPv4Address("203.0.113.2")
S = 1_000_000_000
INSIDE_NET = IPv4Network("10.0.0.0/8")
GW_IN = IPv4Address("10.0.1.1")  # the gateway's inside address (hairpin masquerade)
LOCAL = {GW_IN, NAT}


def mac_of(addr: IPv4Address) -> str:
    return "02:aa:" + addr.packed.hex(":")


T0 = 1000 * S


def udp(sport: int = 40000, status: int = IPS_SEEN_REPLY | IPS_ASSURED | IPS_SRC_NAT) -> CtFlow:
    return CtFlow(17, CtTuple(WS, INET, sport, 53), CtTuple(INET, NAT, 53, sport),
                  status, None, 0, 120)  # fmt: skip


def tcp(sport: int = 40000, state: int | None = TCP_CONNTRACK_ESTABLISHED) -> CtFlow:
    return CtFlow(6, CtTuple(WS, INET, sport, 80), CtTuple(INET, NAT, 80, sport),
                  IPS_SEEN_REPLY | IPS_ASSURED | IPS_SRC_NAT, state, 0, 350)  # fmt: skip


class FakeTable:
    """The flow map as the program sees it: packed keys and values are decoded with the
    product's own unpackers (so a wrong layout shows as a wrong entry)."""

    def __init__(self) -> None:
        self.entries: dict[FlowKey, FlowEntry] = {}
        self.batches = 0

    def add_packed_flows(self, keys: bytes, values: bytes) -> None:
        self.batches += 1
        ks, vs = flowpack.KEY_SIZE, flowpack.VALUE_SIZE
        assert len(keys) // ks == len(values) // vs
        for i in range(len(keys) // ks):
            key = flowpack.unpack_key(keys[i * ks : (i + 1) * ks])
            self.entries[key] = flowpack.unpack_value(values[i * vs : (i + 1) * vs])

    def delete_flow(self, key: FlowKey) -> bool:
        return self.entries.pop(key, None) is not None

    def delete_packed_flow(self, key: bytes) -> bool:
        return self.delete_flow(flowpack.unpack_key(key))

    def packed_flow(self, key: bytes) -> FlowEntry | None:
        return self.entries.get(flowpack.unpack_key(key))

    def flow_activity(self, key: bytes) -> tuple[int, int] | None:
        entry = self.entries.get(flowpack.unpack_key(key))
        return None if entry is None else (entry.last_seen_ns, entry.flags)

    def flows(self) -> list[tuple[FlowKey, FlowEntry]]:
        return list(self.entries.items())

    def touch(self, ct: CtFlow, at_ns: int, flags: int = 0) -> None:
        """The program forwarded a packet of ``ct`` at ``at_ns``."""
        for key in flow_keys(ct, INSIDE, OUTSIDE):
            self.entries[key] = replace(self.entries[key], last_seen_ns=at_ns, flags=flags)


class FakeKernel:
    def __init__(self) -> None:
        self.queue: list[CtEvent] = []
        self.table: dict[tuple[int, CtTuple], CtFlow] = {}
        self.overflow = False
        self.refreshed: list[tuple[CtFlow, int]] = []
        self.parked: list[CtFlow] = []
        self.neighbours = True
        self.outside = OUTSIDE.ifindex  # the interface of the default route

    def emit(self, kind: str, ct: CtFlow) -> None:
        self.queue.append(CtEvent(kind, ct))
        if kind == "destroy":
            self.table.pop(ct.key, None)
        else:
            self.table[ct.key] = ct

    def fileno(self) -> int:
        return -1

    def events(self, limit: int) -> tuple[list[CtEvent], bool]:
        out, self.queue = self.queue[:limit], self.queue[limit:]
        overflow, self.overflow = self.overflow, False
        return out, overflow

    def dump(self) -> Iterable[CtFlow]:
        return list(self.table.values())

    def get(self, proto: int, orig: CtTuple) -> CtFlow | None:
        return self.table.get((proto, orig))

    def refresh(self, items: Sequence[tuple[CtFlow, int]]) -> int:
        self.refreshed += items
        return len(items)

    def park(self, flows: Sequence[CtFlow]) -> int:
        self.parked += flows
        return len(flows)

    def next_hop(self, dst: IPv4Address) -> tuple[int, str] | None:
        """Inside: 10/8; the gateway's own addresses: lo; the rest: outside. Each
        address's MAC spells the address (so a MAC in the wrong direction shows)."""
        if not self.neighbours:
            return None
        if dst in LOCAL:
            return 1, "02:00:00:00:00:01"
        ifindex = INSIDE.ifindex if dst in INSIDE_NET else self.outside
        return ifindex, mac_of(dst)


def make(capacity: int = 1024) -> tuple[EventOffloader, FakeTable, FakeKernel]:
    table, kernel = FakeTable(), FakeKernel()
    off = EventOffloader(table, kernel, INSIDE, OUTSIDE, capacity, timeouts=TIMEOUTS,
                         idle_seconds=300)  # fmt: skip
    off.step(T0)  # the start resync
    return off, table, kernel


def test_assured_update_installs_both_directions_in_one_batch() -> None:
    off, table, kernel = make()
    for port in (40000, 40001, 40002):
        kernel.emit("new", udp(port, IPS_SRC_NAT))
        kernel.emit("update", udp(port))
    off.step(T0)
    assert off.stats.offloaded == 3 and len(table.entries) == 6
    assert table.batches == 1, "one batch update for the step"
    assert off.nat_ports[(17, NAT, INET, 53)] == 3
    out_key, back_key = flow_keys(udp(40000), INSIDE, OUTSIDE)
    assert table.entries[out_key].new_saddr == NAT and table.entries[back_key].new_daddr == WS


def test_destroy_removes_the_pair_and_the_port_use() -> None:
    off, table, kernel = make()
    kernel.emit("new", udp(40000, IPS_SRC_NAT))
    kernel.emit("update", udp(40000))
    off.step(T0)
    kernel.emit("destroy", udp(40000))
    off.step(T0 + S)
    assert not table.entries and not off.tracked
    assert off.stats.removed["conntrack_destroyed"] == 1
    assert not off.nat_ports


def test_tcp_destroyed_while_established_is_an_idle_timeout() -> None:
    off, _, kernel = make()
    kernel.emit("update", tcp(40000))
    off.step(T0)
    kernel.emit("destroy", tcp(40000))  # timed out open
    kernel.emit("destroy", tcp(40001, state=7))  # TIME_WAIT: closed
    kernel.emit("destroy", udp(40002))
    off.step(T0 + S)
    assert off.stats.idle_timeouts == 1
    assert off.stats.as_dict()["idle_timeouts"] == 1


def test_tcp_leaving_established_goes_back_to_the_kernel() -> None:
    off, table, kernel = make()
    kernel.emit("update", tcp())
    off.step(T0)
    assert off.stats.active == 1
    kernel.emit("update", tcp(state=4))  # FIN_WAIT: the kernel saw the FIN
    off.step(T0 + S)
    assert off.stats.removed["fin_rst"] == 1 and not table.entries


def test_tcp_update_without_state_is_looked_up() -> None:
    off, _, kernel = make()
    kernel.table[tcp().key] = tcp(state=2)  # SYN_RECV in the kernel
    kernel.queue.append(CtEvent("update", tcp(state=None)))  # e.g. a mark change
    off.step(T0)
    assert off.stats.offloaded == 0, "the kernel's state decides, not the event's gap"


def test_refusals_count_flows_not_events() -> None:
    off, _, kernel = make(capacity=4)  # room for one pair (headroom kept)
    kernel.emit("update", udp(40000))
    kernel.emit("update", udp(40001))
    off.step(T0)
    kernel.emit("update", udp(40001))
    off.step(T0 + S)
    assert off.stats.active == 1 and off.stats.table_full == 1
    off, _, kernel = make()
    kernel.neighbours = False
    kernel.emit("update", udp(40002))
    kernel.emit("update", udp(40002))
    off.step(T0)
    kernel.emit("update", udp(40002))
    off.step(T0 + S)
    assert off.stats.skipped["no_neighbour"] == 1 and off.stats.active == 0


def test_keepalive_refreshes_active_flows_only_near_expiry() -> None:
    off, table, kernel = make()
    kernel.emit("update", udp(40000))
    kernel.emit("update", udp(40001))
    off.step(T0)
    installed = off.tracked[udp(40000).key].refreshed_ns
    table.touch(udp(40000), installed + 50 * S)  # the fast path carried 40000 only
    off.step(T0 + 60 * S)
    assert kernel.refreshed == [], "nothing is looked at long before expiry"
    off.step(T0 + 106 * S)  # 120 s timeout, looked at 15 s before
    assert [ct.orig.sport for ct, _ in kernel.refreshed] == [40000]
    (_, left), = kernel.refreshed  # fmt: skip
    assert 60 <= left <= 65, "what the kernel would have left after the last packet"
    off.step(T0 + 119 * S)  # the quiet one: a last look, still quiet: left to expire
    assert len(kernel.refreshed) == 1 and off.stats.active == 2
    kernel.emit("destroy", udp(40001))
    off.step(T0 + 121 * S)
    assert off.stats.active == 1 and off.destroyed_while_active == 0


def test_closing_and_idle_flows_leave_at_their_look() -> None:
    off, table, kernel = make()
    kernel.emit("update", tcp(40000))
    kernel.emit("update", tcp(40001))
    off.step(T0)
    table.touch(tcp(40000), T0 + S, flags=FLOW_F_CLOSING)
    off.step(T0 + 301 * S)
    assert off.stats.removed["fin_rst"] == 1
    assert off.stats.removed["idle"] == 0 and off.stats.active == 1, "never forwarded: 0"
    table.touch(tcp(40001), T0 + 2 * S)
    off.step(T0 + 700 * S)
    assert off.stats.removed["idle"] == 1 and not table.entries
    assert kernel.parked == [tcp(40001)], "the idle flow is parked in conntrack"


def test_parked_flow_returns_on_its_mark_change_event() -> None:
    off, table, kernel = make()
    kernel.emit("update", tcp(40000))
    off.step(T0)
    table.touch(tcp(40000), T0 + 2 * S)
    off.step(T0 + 400 * S)
    assert off.idle_parked == 1 and not table.entries
    # traffic again: the forward chain clears the mark; the event carries no TCP state
    kernel.queue.append(CtEvent("update", tcp(40000, state=None)))
    off.step(T0 + 401 * S)
    assert off.stats.active == 1 and len(table.entries) == 2
    assert off.snapshot()["unparked"] == 1


def test_packed_plan_is_plan() -> None:
    gwlb_if = Interface(9, "02:00:00:00:00:09")
    icmp = CtFlow(1, CtTuple(WS, INET, 77, 0), CtTuple(INET, NAT, 1077, 0),
                  IPS_SEEN_REPLY | IPS_SRC_NAT, None, 0, 30)  # fmt: skip
    cases = (
        (udp(), INSIDE, OUTSIDE, False, False),
        (tcp(), gwlb_if, OUTSIDE, True, False),
        (icmp, INSIDE, OUTSIDE, False, False),
        (port_forward(), OUTSIDE, INSIDE, False, False),
        (hairpin(17), INSIDE, INSIDE, False, True),
    )
    for ct, inside, outside, gwlb, pin in cases:
        (ok, ov), (bk, bv) = plan(ct, inside, outside, "02:00:00:00:00:aa",
                                  "02:00:00:00:00:bb", gwlb=gwlb, hairpin=pin)  # fmt: skip
        macs = flowpack.mac_bytes("02:00:00:00:00:aa"), flowpack.mac_bytes("02:00:00:00:00:bb")
        packed = plan_packed(ct, inside, outside, *macs, gwlb=gwlb, hairpin=pin)
        expected = tuple(map(flowpack.pack_key, (ok, bk))) + tuple(
            map(flowpack.pack_value, (ov, bv))
        )
        assert packed == expected
        assert flowpack.unpack_value(packed[3]) == bv and flowpack.unpack_key(packed[0]) == ok


def test_overflow_resyncs_adopts_and_deletes_orphans() -> None:
    off, table, kernel = make()
    kernel.emit("update", udp(40000))
    off.step(T0)
    kernel.emit("update", udp(40001))
    kernel.emit("destroy", udp(40000))
    kernel.queue.clear()  # the events are lost ...
    kernel.overflow = True  # ... and the socket says so
    off.step(T0 + S)
    off.step(T0 + S)
    assert off.resyncs == {"start": 1, "enobufs": 1}
    assert set(off.tracked) == {udp(40001).key}
    assert off.stats.removed["conntrack_destroyed"] == 1
    assert len(table.entries) == 2
    fresh = EventOffloader(table, kernel, INSIDE, OUTSIDE, 1024, timeouts=TIMEOUTS)
    orphan = flow_keys(udp(40009), INSIDE, OUTSIDE)[0]
    table.entries[orphan] = next(iter(table.entries.values()))
    fresh.step(T0 + 2 * S)  # a restarted agent
    assert fresh.stats.adopted == 1 and fresh.stats.removed["orphan"] == 1
    assert orphan not in table.entries and fresh.snapshot()["resyncs_total"] == 1


def test_replied_udp_that_is_not_a_stream_stays_in_the_kernel() -> None:
    off, table, kernel = make()
    kernel.emit("update", udp(40000, IPS_SEEN_REPLY | IPS_SRC_NAT))  # one packet each way
    off.step(T0)
    kernel.overflow = True  # nor does a resync take it
    off.step(T0 + S)
    off.step(T0 + S)
    assert off.resyncs["enobufs"] == 1 and not table.entries and off.stats.offloaded == 0


# ---- destination NAT: port forwards, load-balancer listeners, hairpin ---------------

CLIENT = IPv4Address("198.51.100.20")  # on the internet
BACKEND = IPv4Address("10.0.1.20")  # an inside workload behind a forward or a listener
LISTENER = IPv4Address("10.0.1.5")  # a load-balancer listener on an inside address
FORWARDED = IPS_SEEN_REPLY | IPS_ASSURED | IPS_DST_NAT


def dnat(proto: int, orig: CtTuple, reply: CtTuple, status: int = FORWARDED) -> CtFlow:
    state = TCP_CONNTRACK_ESTABLISHED if proto == 6 else None
    return CtFlow(proto, orig, reply, status, state, 0, 350 if proto == 6 else 120)


def port_forward(proto: int = 6) -> CtFlow:
    """internet client -> outside address :8080, forwarded to the backend's :80."""
    return dnat(proto, CtTuple(CLIENT, NAT, 50000, 8080), CtTuple(BACKEND, CLIENT, 80, 50000))


def hairpin(proto: int = 6, daddr: IPv4Address = NAT, dport: int = 8080) -> CtFlow:
    """inside client -> ``daddr``:``dport`` (an outside address's forward, or an inside
    listener), to the backend's :80, masqueraded to the gateway's inside address."""
    return dnat(proto, CtTuple(WS, daddr, 40000, dport), CtTuple(BACKEND, GW_IN, 80, 61000),
                FORWARDED | IPS_SRC_NAT)  # fmt: skip


def entry(
    saddr: IPv4Address,
    daddr: IPv4Address,
    sport: int,
    dport: int,
    out: Interface,
    toward: IPv4Address,
    flags: int = 0,
) -> FlowEntry:
    return FlowEntry(saddr, daddr, sport, dport, out.ifindex, out.mac, mac_of(toward), flags)


@pytest.mark.parametrize("proto", [6, 17])
def test_port_forward_offloads_with_the_kernels_mapping(proto: int) -> None:
    off, table, kernel = make()
    kernel.emit("new", replace(port_forward(proto), status=IPS_DST_NAT))  # a first packet
    kernel.emit("update", port_forward(proto))
    off.step(T0)
    assert off.stats.offloaded == 1 and off.nat_ports == {}, "no source NAT, no port use"
    assert table.entries == {
        # arrives on the outside: the destination becomes the backend's address and port
        FlowKey(OUTSIDE.ifindex, CLIENT, NAT, 50000, 8080, proto):
            entry(CLIENT, BACKEND, 50000, 80, INSIDE, BACKEND),
        # the backend's answer, on the inside: its source becomes the forward's again
        FlowKey(INSIDE.ifindex, BACKEND, CLIENT, 80, 50000, proto):
            entry(NAT, CLIENT, 8080, 50000, OUTSIDE, CLIENT),
    }  # fmt: skip


@pytest.mark.parametrize(("daddr", "dport"), [(NAT, 8080), (LISTENER, 443)])
def test_hairpin_translates_both_addresses_on_the_inside(daddr: IPv4Address, dport: int) -> None:
    off, table, kernel = make()
    kernel.emit("update", hairpin(17, daddr, dport))
    off.step(T0)
    assert table.entries == {
        FlowKey(INSIDE.ifindex, WS, daddr, 40000, dport, 17):
            entry(GW_IN, BACKEND, 61000, 80, INSIDE, BACKEND, FLOW_F_DENY_TRANSLATED),
        FlowKey(INSIDE.ifindex, BACKEND, GW_IN, 80, 61000, 17):
            entry(daddr, WS, dport, 40000, INSIDE, WS, FLOW_F_DENY_TRANSLATED),
    }  # fmt: skip


def test_dnat_to_the_gateway_itself_stays_in_the_kernel() -> None:
    """A forward onto one of the gateway's own addresses is delivered, not forwarded."""
    off, table, kernel = make()
    local = dnat(6, CtTuple(CLIENT, NAT, 50000, 8080), CtTuple(GW_IN, CLIENT, 80, 50000))
    kernel.emit("update", local)
    kernel.emit("update", local)
    off.step(T0)
    assert not table.entries and off.stats.skipped == {"not_forwarded": 1}


def test_dnat_flows_keep_the_reasons_of_what_is_not_decided() -> None:
    off, table, kernel = make()
    syn_recv = replace(port_forward(), tcp_state=2)
    unreplied = replace(port_forward(), status=IPS_DST_NAT)
    inspected = replace(port_forward(17), mark=CT_MARK_INSPECT)
    stream_not_yet = replace(port_forward(17), status=IPS_DST_NAT | IPS_SEEN_REPLY)
    for ct in (syn_recv, unreplied, inspected, stream_not_yet):
        kernel.emit("update", ct)
    kernel.neighbours = False
    kernel.emit("update", hairpin())
    off.step(T0)
    assert not table.entries and off.stats.skipped == {"no_neighbour": 1}


def test_dnat_pair_leaves_on_fin_and_is_adopted_after_a_restart() -> None:
    off, table, kernel = make()
    kernel.emit("update", port_forward())
    kernel.emit("update", hairpin())
    off.step(T0)
    assert len(table.entries) == 4
    restarted = EventOffloader(table, kernel, INSIDE, OUTSIDE, 1024, timeouts=TIMEOUTS)
    restarted.step(T0 + S)
    assert restarted.stats.adopted == 2 and len(table.entries) == 4
    assert restarted.stats.removed == {}, "nothing taken for an orphan"
    kernel.emit("update", replace(port_forward(), tcp_state=5))  # FIN_WAIT: the kernel's
    restarted.step(T0 + 2 * S)
    assert set(restarted.tracked) == {hairpin().key} and len(table.entries) == 2


def test_one_arm_dnat_legs_keep_the_deny_list_on_the_packet() -> None:
    """One interface: the forward chain admits destination-NATed flows before any deny
    rule, so no leg is judged on its translated destination."""
    arm = Interface(2, "02:00:00:00:00:02")
    table, kernel = FakeTable(), FakeKernel()
    kernel.outside = arm.ifindex
    off = EventOffloader(table, kernel, arm, arm, 1024, timeouts=TIMEOUTS)
    off.step(T0)
    kernel.emit("update", hairpin())
    kernel.emit("update", port_forward())
    off.step(T0)
    assert len(table.entries) == 4
    assert {k.ifindex for k in table.entries} == {2}
    assert all(e.flags == 0 for e in table.entries.values())


def test_an_entry_committed_on_a_takeover_is_installed_from_its_new_event() -> None:
    """conntrackd's commit creates entries already replied and assured: their NEW event
    is the only one that may ever come, so it installs them; a first packet's NEW does
    not (its assured update decides)."""
    off, table, kernel = make()
    kernel.emit("new", tcp(40000))  # committed: seen-reply, assured, ESTABLISHED
    kernel.emit("new", udp(40001))
    kernel.emit("new", udp(40002, IPS_SRC_NAT))  # a first packet
    off.step(T0)
    assert set(off.tracked) == {tcp(40000).key, udp(40001).key}
    assert len(table.entries) == 4 and off.nat_ports[(17, NAT, INET, 53)] == 2


def test_a_flow_without_a_neighbour_is_tried_again_each_second() -> None:
    """A new leader has never forwarded to the workload nor to its next hop when the
    committed entries arrive: they wait until the kernel path resolved them."""
    off, table, kernel = make()
    kernel.neighbours = False
    kernel.emit("new", tcp(40000))
    kernel.emit("new", tcp(40001))
    off.step(T0)
    off.step(T0 + S // 2)
    assert not table.entries and off.stats.skipped["no_neighbour"] == 2
    kernel.emit("destroy", tcp(40001))  # gone meanwhile: not tried again
    kernel.neighbours = True
    off.step(T0 + S // 2 + 1)  # the same second: not yet
    assert not table.entries
    off.step(T0 + S)
    assert set(off.tracked) == {tcp(40000).key} and off.stats.skipped["no_neighbour"] == 2


def test_a_waiting_flow_is_judged_on_its_latest_event() -> None:
    off, table, kernel = make()
    kernel.neighbours = False
    kernel.emit("new", tcp(40000))
    off.step(T0)
    kernel.neighbours = True
    kernel.emit("update", tcp(40000, state=4))  # FIN_WAIT before the retry
    off.step(T0 + S)
    off.step(T0 + 2 * S)
    assert not table.entries and not off.tracked


def test_a_source_natted_client_not_behind_the_inside_interface_stays_in_the_kernel() -> None:
    """The forward probe's namespace (198.18.255.254, behind its own veth) and any other
    client the gateway routes elsewhere than the inside interface: its packets never
    meet the inside XDP program, and a reply sent there would reach nobody."""
    off, table, kernel = make()
    probe = IPv4Address("198.18.255.254")
    flow = replace(tcp(41000), orig=CtTuple(probe, INET, 41000, 80))
    kernel.emit("update", flow)
    kernel.emit("update", tcp())
    off.step(T0)
    assert off.stats.skipped == {"not_forwarded": 1}
    assert {k.saddr for k in table.entries} == {WS, INET}  # the workload's pair only
