"""The GWLB lab: the lab plus ``cs-gwlb`` (simulator) and ``cs-ws-g`` (its workload),
with both gateways run by the agent from a document whose ``gwlb`` section attaches
the GWLB programs to ``gwlb``, answers the health check and leaves GWLB flows on the
kernel path while the XDP fast path runs on inside/outside.

Each test module picks its document through :func:`running`; the module fixture
``gwlb_lab`` here is two-arm."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from geneve import Gwlb
from perf.lab.gwlbsim import HEALTH_PORT, GwlbLab
from perf.lab.topology import TOPOLOGY
from tests.netns.helpers import agent, document

GWLB = TOPOLOGY.gwlb
GATEWAYS = tuple(t.netns for t in GWLB.targets)


def gwlb_document(**gwlb: Any) -> dict[str, Any]:
    """A lab gateway document with GWLB on ``gwlb`` (health check on the lab's port)."""
    section: dict[str, Any] = {
        "enabled": True,
        "interface": GWLB.gateway_if,
        "mode": "two-arm",
        "health_check": {"protocol": "tcp", "port": HEALTH_PORT},
    }
    return document(gwlb={**section, **gwlb})


@contextmanager
def running(lab_session: Any, doc: dict[str, Any]) -> Iterator[GwlbLab]:
    """The simulator up (no lab health responders: the agents answer), an agent per
    gateway converged to ``doc``, both gateways healthy; all removed afterwards."""
    lab_session.up()
    glab = GwlbLab(lab_session)
    try:
        glab.up(health=False)
        with ExitStack() as stack:
            for netns in GATEWAYS:
                stack.enter_context(agent(netns, doc))
            for t in GWLB.targets:
                glab.wait_health(t.az, True)
            yield glab
    finally:
        glab.down()


@pytest.fixture(scope="module")
def gwlb_lab(lab_session: Any) -> Iterator[GwlbLab]:
    with running(lab_session, gwlb_document(mode="two-arm")) as glab:
        yield glab


def gateway_counters(netns: str) -> dict[str, int]:
    """Packets per GWLB reason, read from the gateway's pinned maps (bpffs is shared
    with the host; adopting the pins leaves their configuration alone)."""
    gwlb = Gwlb(netns, GWLB.gateway_if).load()
    try:
        return {name: c["packets"] for name, c in gwlb.counters().items()}
    finally:
        gwlb.close()
