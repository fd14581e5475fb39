"""``python -m perf flowlog`` without privileges: the entries it creates are the tuples
it means (parsed back with the product's ctnetlink parser), distinct at 250,000, and
each flow-log figure is paired with the bare counter's at the same size."""

from __future__ import annotations

from ipaddress import IPv4Address

from perf.flowlog import Run, _entry, results
from perf.suites import STANDALONE
from xdp.ctevents import MSG_NEW, messages, parse_message


def test_entries_are_distinct_udp_tuples() -> None:
    seen = set()
    for i in (0, 1, 49_999, 50_000, 249_999):
        ((buf, kind, off, end),) = list(messages(_entry(i, i + 1)))
        flow = parse_message(buf, off, end)
        assert kind == MSG_NEW and flow is not None and flow.proto == 17
        assert flow.orig.daddr == IPv4Address("198.51.100.1") == flow.reply.saddr
        assert flow.reply.dport == flow.orig.sport
        seen.add((flow.orig.saddr, flow.orig.sport))
    assert len(seen) == 5


def test_flow_log_figures_are_ratios_against_the_bare_counter() -> None:
    runs = [
        Run("count", 10, {"received": 10, "cpu_s": 0.5, "drain_s": 1.0}),
        Run("flowlog_reliable", 10, {"received": 10, "written": 9, "cpu_s": 2.0, "held_s": 0.3}),
        Run("flowlog_unreliable", 10, {"received": 7, "kernel_lost": 3, "cpu_s": 1.0}),
    ]
    got = {(r.path, r.metric): r for r in results(runs)}
    cpu = got[("flowlog_reliable_10", "cpu_s")]
    assert (cpu.baseline, cpu.ratio) == ("count_10", 4.0)
    assert got[("flowlog_unreliable_10", "cpu_s")].ratio == 2.0
    assert got[("flowlog_unreliable_10", "kernel_lost")].value == 3
    assert got[("flowlog_reliable_10", "held_s")].value == 0.3
    assert got[("count_10", "cpu_s")].baseline is None
    assert STANDALONE["flowlog"] == "perf.flowlog"
