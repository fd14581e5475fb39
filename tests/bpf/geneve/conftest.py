"""BPF-tier fixtures for the GWLB programs: one compile per session, a pinned
throwaway instance, flows and counters reset before every test; ``linked``: the same
instance linked to the session's fast path (tests/bpf/conftest.py) for one test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from geneve import Gwlb, GwlbBuild
from tests.bpf.conftest import require_bpf
from xdp import Dataplane

TEST_PIN_ROOT = Path("/sys/fs/bpf/spectra-test")
LOCAL = "172.16.1.2"  # the appliance's GWLB-side address in the packet cases


@pytest.fixture(scope="session")
def session_gwlb() -> Iterator[Gwlb]:
    require_bpf()
    gwlb = Gwlb(
        f"gwlb-{os.getpid()}", "lo", build=GwlbBuild(flow_table_size=1024), pin_root=TEST_PIN_ROOT
    ).load()
    yield gwlb
    gwlb.destroy()


@pytest.fixture
def gwlb(session_gwlb: Gwlb) -> Gwlb:
    session_gwlb.mode = "two-arm"
    session_gwlb.idle_timeout = 350.0
    session_gwlb.allowed_sources = ()
    session_gwlb.configure(local_addr=LOCAL)
    session_gwlb.maps.clear_flows()
    session_gwlb.maps.clear_counters()
    return session_gwlb


@pytest.fixture
def linked(gwlb: Gwlb, dataplane: Dataplane) -> Iterator[tuple[Gwlb, Dataplane]]:
    gwlb.link_fastpath(dataplane)
    try:
        yield gwlb, dataplane
    finally:
        gwlb.unlink_fastpath(dataplane)
