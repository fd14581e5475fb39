"""What the VPC-lab tests share: the lab up with the product's agents on every gateway
instance (one lab per test module), every AZ led again before a test, the workloads'
view of the internet, and the flow probe (established TCP connections + a UDP stream)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from perf.lab.host import ns_exec
from perf.lab.vpc import VpcLab
from perf.lab.vpc.fleet import STORE, Fleet, document
from perf.lab.vpc.topology import INET_SERVICE_IP
from tests.netns.helpers import sh

WORKLOAD = {"a": "cv-ws-a", "b": "cv-ws-b"}


@contextlib.contextmanager
def running_fleet(store: Literal["local", "ssm"] = "local", **doc: Any) -> Iterator[Fleet]:
    """A fresh lab, the lab's document (``doc`` overrides) published, every agent
    converged and joined; everything torn down after."""
    lab = VpcLab()
    with lab.exclusive():
        lab.down()
        try:
            status = lab.up()
            STORE.unlink(missing_ok=True)
            f = Fleet(lab, store)
            f.publish(document(status, **doc))
            if store == "ssm":
                f.store_up()
            f.start()
            f.wait_converged()
            lab.sync()
            yield f
        finally:
            Fleet(lab, store).stop()
            lab.down()


def make_healthy(fleet: Fleet) -> Fleet:
    """Every instance up with its agent, every AZ led, the mirror in step."""
    for name in ("a1", "a2", "b1"):
        if not fleet.lab.alive(name):
            fleet.lab.revive_instance(name)
        fleet.start([name])
    fleet.wait_converged()
    fleet.lab.sync()
    return fleet


def public_address(ws: str) -> str:
    """The address the internet service sees ``ws`` coming from."""
    out = sh(ws, "curl", "-s", "-m", "5", f"http://{INET_SERVICE_IP}/")
    assert out.returncode == 0, out.stderr
    address: str = json.loads(out.stdout)["client_ip"]
    return address


def probe(ws: str, out: Path, seconds: float, connections: int = 200) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ns_exec(ws, sys.executable, "-m", "perf.lab.flowprobe", "--target", INET_SERVICE_IP,
                "--duration", str(seconds), "--connections", str(connections),
                "--json", str(out)),
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def finish(running: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
    assert running.wait(timeout=120) == 0
    summary: dict[str, Any] = json.loads(out.read_text())
    return summary


def leadership(aws: dict[str, Any]) -> list[str]:
    """The kinds of an agent's lease events that change who leads, oldest first (a
    takeover's outcome, ``takeover_failed`` / ``takeover_recovered``, is left out: the
    tests judge it by the takeover report)."""
    return [e["kind"] for e in aws["lease"]["events"] if not e["kind"].startswith("takeover_")]
