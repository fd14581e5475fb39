"""The GWLB lab: the lab plus ``cs-gwlb`` (simulator) and ``cs-ws-g`` (its workload),
gateways running the agent's kernel path (NAT) and the GWLB programs on ``gwlb``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from perf.gwlbsim import GwlbLab, targets
from tests.netns.helpers import agent, document

# The kernel path only: the XDP offloader does not know GWLB flows yet and would
# redirect replies to the inside interface instead of re-encapsulating them.
KERNEL_ONLY = document(interfaces={"data_plane": "kernel"})


def attach(netns: str, mode: str = "two-arm") -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "perf.gwlbsim", "attach", "--netns", netns, "--mode", mode],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    status: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return status


@pytest.fixture(scope="module")
def gwlb_lab(lab_session: Any) -> Iterator[GwlbLab]:
    lab_session.up()
    glab = GwlbLab(lab_session)
    glab.up()
    try:
        with agent("cs-gw-a", KERNEL_ONLY), agent("cs-gw-b", KERNEL_ONLY):
            for t in targets():
                attach(t.netns)
            for t in targets():
                glab.wait_health(t.az, True)
            yield glab
    finally:
        glab.down()
