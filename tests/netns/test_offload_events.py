"""The event-driven offloader against the kernel: real NATed UDP flows in namespaces of
this test's own (:class:`perf.lab.flowlab.FlowLab`), the kernel's conntrack events
through the product's socket filter, a real (pinned, unattached) flow table.

* the candidate filter: a one-packet-each-way flow, traffic to the gateway itself and
  a flow held for inspection never reach the offloader as an update; an assured
  stream does, and both its directions land in the table;
* a conntrack DESTROY removes the pair from the table;
* an overflowing event socket (ENOBUFS) is counted as a resync and nothing is lost;
* with the program attached, a flow idle on the fast path is parked (its conntrack
  mark), and its next packet -- through the kernel, where the product's forward-chain
  rule clears the mark -- brings it back to the fast path at once, without a resync.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from pyroute2 import NetNS

from control.steps.nftables import UNPARK_RULE
from nfq.marks import CT_MARK_PARKED
from perf.lab.flowlab import (
    ASK_REPLY,
    DESTINATIONS,
    NO_REPLY,
    OUTSIDE_IP,
    Flow,
    FlowLab,
    flows,
    in_netns,
)
from xdp import Dataplane, loader
from xdp.ctevents import EventKernel
from xdp.loader import BuildOptions
from xdp.offload import Interface, Timeouts, flow_keys
from xdp.offload_events import EventOffloader

PIN_ROOT = Path("/sys/fs/bpf/spectra-test")
OPTIONS = BuildOptions(flow_table_size=4096, deny_port_table_size=8192)
INSPECTED = DESTINATIONS[1]


@pytest.fixture(scope="module")
def flowlab() -> Iterator[FlowLab]:
    lab = FlowLab(f"csev{os.getpid()}")
    lab.up()
    lab.masquerade()
    subprocess.run(
        ["ip", "netns", "exec", lab.gateway, "nft",
         "add chain ip flowlab marks { type filter hook forward priority 0; }; "
         f"add rule ip flowlab marks ip daddr {INSPECTED} ct mark set 0x1; "
         f"add rule ip flowlab marks {UNPARK_RULE}"],
        check=True,
    )  # fmt: skip
    lab.start_reflector()
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def dataplane() -> Iterator[Dataplane]:
    dp = Dataplane.load(f"ctev-{os.getpid()}", OPTIONS, pin_root=PIN_ROOT)
    try:
        yield dp
    finally:
        dp.close()
        loader.unpin(loader.pin_dir_for(f"ctev-{os.getpid()}", PIN_ROOT))


def _interfaces(ns: str) -> tuple[Interface, Interface]:
    with NetNS(ns) as ipr:
        out = []
        for name in ("inside", "outside"):
            link = ipr.get_links(ipr.link_lookup(ifname=name)[0])[0]
            out.append(Interface(int(link["index"]), str(link.get_attr("IFLA_ADDRESS"))))
        return out[0], out[1]


OPEN: list[EventKernel] = []


@pytest.fixture(autouse=True)
def _close_kernels() -> Iterator[None]:
    yield
    while OPEN:
        OPEN.pop().close()


def _offloader(
    lab: FlowLab, dp: Dataplane, rcvbuf: int = 8 << 20, idle_seconds: float = 300.0
) -> EventOffloader:
    with in_netns(lab.gateway):
        kernel = EventKernel(rcvbuf)
    OPEN.append(kernel)
    inside, outside = _interfaces(lab.gateway)
    dp.flow_table.clear()
    return EventOffloader(dp, kernel, inside, outside, 4096, timeouts=Timeouts(),
                          idle_seconds=idle_seconds)  # fmt: skip


def _steps(off: EventOffloader, seconds: float = 0.6) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        off.step(wait=0.05)


def _flush(lab: FlowLab) -> None:
    subprocess.run(["ip", "netns", "exec", lab.gateway, "conntrack", "-F"],
                   capture_output=True, check=False)  # fmt: skip


def test_candidate_filter_lets_only_assured_nated_flows_through(
    flowlab: FlowLab, dataplane: Dataplane
) -> None:
    _flush(flowlab)
    off = _offloader(flowlab, dataplane)
    _steps(off, 0.2)  # the start resync: nothing yet
    sender = flowlab.sender()
    batch = flows(16)  # two to each destination, one destination held for inspection
    sender.send(batch, ASK_REPLY, 1000)
    subprocess.run(["ip", "netns", "exec", flowlab.client, "ping", "-c2", "-i0.2",
                    "10.90.0.1"], capture_output=True, check=True)  # fmt: skip
    _steps(off)
    assert off.events == len(batch), "only the NATed flows' NEW events pass the filter"
    assert off.stats.offloaded == 0, "one packet each way is not worth offloading"
    assert off.nat_ports[(17, IPv4Address(OUTSIDE_IP), IPv4Address(batch[0].daddr), 7)] == 2
    time.sleep(2.2)  # the kernel's UDP stream rule: a packet 2 s after the reply
    sender.send(batch, NO_REPLY, 1000)
    _steps(off)
    streams = [f for f in batch if f.daddr != INSPECTED]
    assert off.events == len(batch) + len(streams), "assured updates, not the inspected"
    assert off.stats.offloaded == len(streams)
    inside, outside = _interfaces(flowlab.gateway)
    for key, tracked in off.tracked.items():
        out_key, back_key = flow_keys(tracked.ct, inside, outside)
        assert dataplane.flow(out_key) is not None and dataplane.flow(back_key) is not None
        assert key[1].daddr.exploded != INSPECTED
    sender.close()


def test_destroy_removes_the_pair(flowlab: FlowLab, dataplane: Dataplane) -> None:
    assert dataplane.flows(), "the previous test left offloaded flows"
    off = _offloader(flowlab, dataplane)
    _steps(off, 0.3)
    assert off.stats.adopted == 0 and off.tracked, "the start resync offloads them again"
    victim_key, victim = next(iter(off.tracked.items()))
    keys = victim.flow_keys()
    subprocess.run(
        ["ip", "netns", "exec", flowlab.gateway, "conntrack", "-D", "-p", "udp",
         "--orig-port-src", str(victim.ct.orig.sport), "-d", str(victim.ct.orig.daddr)],
        capture_output=True, check=True,
    )  # fmt: skip
    _steps(off, 0.3)
    assert victim_key not in off.tracked
    assert off.stats.removed["conntrack_destroyed"] == 1
    assert all(dataplane.flow(k) is None for k in keys)
    assert len(dataplane.flows()) == 2 * len(off.tracked)


def test_event_overflow_resyncs_and_loses_nothing(flowlab: FlowLab, dataplane: Dataplane) -> None:
    _flush(flowlab)
    off = _offloader(flowlab, dataplane, rcvbuf=4096)
    _steps(off, 0.2)
    sender = flowlab.sender()
    batch = [f for f in flows(600) if f.daddr != INSPECTED][:400]
    sender.send(batch, ASK_REPLY, 20000)  # far more NEW events than 4 KiB holds
    time.sleep(2.2)
    sender.send(batch, NO_REPLY, 20000)
    time.sleep(0.3)
    _steps(off, 1.5)
    assert off.resyncs["enobufs"] >= 1
    assert off.snapshot()["resyncs_total"] == 1 + off.resyncs["enobufs"]
    assert off.stats.active == len(batch), "every assured flow offloaded after the resync"
    sender.close()


def _marks(lab: FlowLab) -> dict[Flow, int]:
    """Conntrack mark of each UDP flow (``conntrack -L``)."""
    out = subprocess.run(["ip", "netns", "exec", lab.gateway, "conntrack", "-L", "-p", "udp"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    marks = {}
    for line in out.splitlines():
        fields: dict[str, str] = {}
        for name, _, value in (f.partition("=") for f in line.split() if "=" in f):
            fields.setdefault(name, value)  # the first tuple is the original direction
        if "mark" in fields:
            marks[Flow(int(fields["sport"]), fields["dst"])] = int(fields["mark"])
    return marks


def test_idle_flow_is_parked_and_returns_at_its_next_packet(
    flowlab: FlowLab, dataplane: Dataplane
) -> None:
    _flush(flowlab)
    off = _offloader(flowlab, dataplane, idle_seconds=2.0)
    with in_netns(flowlab.gateway):
        for ifname in ("inside", "outside"):
            dataplane.attach(ifname)
    sender = flowlab.sender()
    try:
        batch = [f for f in flows(16) if f.daddr != INSPECTED][:4]
        sender.send(batch, ASK_REPLY, 1000)
        time.sleep(2.2)
        sender.send(batch, NO_REPLY, 1000)
        _steps(off, 0.3)
        assert off.stats.active == 4
        sender.send(batch, NO_REPLY, 1000)  # through the fast path: last seen moves
        time.sleep(0.1)
        keys = {Flow(t.ct.orig.sport, str(t.ct.orig.daddr)): t.keys
                for t in off.tracked.values()}  # fmt: skip
        assert set(keys) == set(batch)
        assert all(dataplane.flow_activity(k[0]) for k in keys.values())
        _steps(off, 4.0)  # idle for 2 s, looked at: parked
        assert off.idle_parked == 4 and not off.tracked and not dataplane.flows()
        marks = _marks(flowlab)
        assert all(marks[f] & CT_MARK_PARKED for f in batch), marks
        back = batch[0]
        sender.send([back], NO_REPLY, 1000)  # the kernel path: the rule clears the mark
        sent = time.monotonic()
        _steps(off, 0.3)
        assert off.unparked == 1 and off.stats.active == 1, "back without a resync"
        assert off.resyncs == {"start": 1}
        assert time.monotonic() - sent < 1.0
        assert dataplane.flow_activity(keys[back][0]) is not None
        marks = _marks(flowlab)
        assert not marks[back] & CT_MARK_PARKED
        assert all(marks[f] & CT_MARK_PARKED for f in batch[1:]), "the others stay"
    finally:
        sender.close()
        with in_netns(flowlab.gateway):
            for ifname in ("inside", "outside"):
                dataplane.detach(ifname)
