"""Fixtures of the BPF tier: one compile per session, one pinned throwaway instance,
maps reset before every test.

Without root or bcc the tier skips, except under ``CI=true`` where it fails with the
reason (a CI run must never silently skip the data-plane tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.packets import EGRESS_IFINDEX, TEST_IFINDEX, FlowSetup, PacketCase
from tests.tiers import require
from xdp import BuildOptions, Dataplane

TEST_PIN_ROOT = Path("/sys/fs/bpf/spectra-test")
# Small tables keep the per-test map reset cheap; the program is the same.
TEST_OPTIONS = BuildOptions(flow_table_size=4096, deny_port_table_size=8192)


def require_bpf() -> None:
    require("bpf")


@pytest.fixture(scope="session")
def session_dataplane() -> Iterator[Dataplane]:
    require_bpf()
    dataplane = Dataplane.load(f"session-{os.getpid()}", TEST_OPTIONS, pin_root=TEST_PIN_ROOT)
    yield dataplane
    dataplane.destroy()


@pytest.fixture
def dataplane(session_dataplane: Dataplane) -> Dataplane:
    """The session instance with empty flows, deny list and counters; the deny list
    applies to frames arriving where BPF_PROG_TEST_RUN says they do (the "inside"),
    and no address is the gateway's own."""
    dp = session_dataplane
    dp.flow_table.clear()
    dp.set_deny_rules([])
    dp.set_deny_scope(TEST_IFINDEX, [])
    dp.stats.clear()
    dp.set_tx_port(EGRESS_IFINDEX)
    return dp


def install(dp: Dataplane, case: PacketCase) -> None:
    """Apply a case's flow-table and deny-list setup."""
    flow: FlowSetup
    for flow in case.flows:
        dp.add_flow(flow.key, flow.entry)
    if case.deny:
        dp.set_deny_rules(case.deny)
