"""Reliable flow-log delivery against the real kernel, in a scratch network namespace.

30,000 conntrack entries end at once (``conntrack -F``) while the flow log's DESTROY
socket has a deliberately small receive buffer (256 KiB, ~250 events).  With reliable
delivery (``NETLINK_BROADCAST_ERROR`` + ``NETLINK_NO_ENOBUFS``) the kernel keeps each
entry whose event the socket could not take and delivers it again: every entry becomes
exactly one record, nothing is lost, the retries are counted, and the entries held
meanwhile are all freed at the end.  Without it the same burst loses events, and
``kernel_lost`` is exactly the number of entries without a record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

FLOWS = 30_000
RCVBUF = 256 << 10
EXPECTED_PORTS = {10_000 + i % 50_000 for i in range(FLOWS)}  # perf.flowlog._entry


@pytest.fixture
def scratch() -> Iterator[str]:
    ns = f"csrel{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def burst(ns: str, reliable: str) -> dict[str, Any]:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", "tests.netns.flowlog_burst",
         "--flows", str(FLOWS), "--rcvbuf", str(RCVBUF), "--reliable", reliable],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    return result


@pytest.mark.timeout(150)
def test_reliable_delivery_turns_every_destroy_into_a_record(scratch: str) -> None:
    got = burst(scratch, "on")
    c = got["counters"]
    assert got["options"] == {"broadcast_error": 1, "no_enobufs": 1}
    assert sorted(got["ports"]) == sorted(EXPECTED_PORTS), "one record per entry, no more"
    assert (c["flows"], c["written"], c["dropped"], c["kernel_lost"]) == (FLOWS, FLOWS, 0, 0)
    assert c["kernel_overflows"] == 0, "NETLINK_NO_ENOBUFS: a retried event is no error"
    assert c["kernel_redelivered"] > 0, "256 KiB cannot hold the burst: the kernel retried"
    assert got["held_after_flush"] > 0, "undelivered entries wait in the conntrack table"
    assert got["held_at_end"] == 0, "and are all freed once delivered"


@pytest.mark.timeout(150)
def test_without_it_the_same_burst_loses_records_and_counts_them(scratch: str) -> None:
    got = burst(scratch, "off")
    c = got["counters"]
    assert got["options"] == {"broadcast_error": 0, "no_enobufs": 0}
    assert len(got["ports"]) == c["written"] < FLOWS, "a 256 KiB buffer overflows"
    assert c["kernel_overflows"] >= 1 and c["dropped"] == 0
    assert c["kernel_lost"] == FLOWS - c["written"], "every lost event counted, exactly"
    assert got["held_after_flush"] == 0, "nothing is kept for a socket that did not ask"
