"""A live vertical resize on the VPC simulator, with the product's agents and executor:
200 long-lived TCP connections and a UDP stream run from AZ a's workload through its
leader while ``Resize`` (what ``spectra aws resize`` runs) replaces AZ a's standby, hands
the lease over to the new instance and replaces the former leader. The Elastic IP never
changes, the connections survive, both AZ-a instances are of the new type and AZ b never
notices. The Auto Scaling group's replacement is modelled by the lab
(:class:`~perf.lab.vpc.fleet.LabReplacer`: moto has no instance refresh).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from control.aws import build
from control.aws.gateway_status import LocalStatus
from control.aws.resize import Resize, Settings, Step
from control.config import parse_document
from perf.lab.host import ns_exec
from perf.lab.vpc.fleet import STORE, Fleet, LabReplacer, document
from perf.lab.vpc.seed import INSTANCE_TYPE
from perf.lab.vpc.topology import INET_SERVICE_IP, LEASE_TABLE
from tests.netns.vpcfleet import public_address, running_fleet

pytestmark = pytest.mark.timeout(240)

WORKLOAD = "cv-ws-a"
NEW_TYPE = "c6in.xlarge"
CONNECTIONS = 200


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """The lab with the product's lease periods (renew 1 s, 5 s): the lab's short ones (a
    failover in 2.25 s) let a loaded machine's slow renewal turn into a failover while new
    instances boot, which is not what this test is about; a hand-over does not wait for
    the lease to run out."""
    with running_fleet(lease={"table": LEASE_TABLE}) as f:
        yield f


def _public_address() -> str:
    return public_address(WORKLOAD)


def _probe(tmp: Path) -> subprocess.Popen[bytes]:
    ready = tmp / "ready"
    proc = subprocess.Popen(
        ns_exec(WORKLOAD, sys.executable, "-m", "perf.lab.flowprobe", "--target",
                INET_SERVICE_IP, "--duration", "200", "--connections", str(CONNECTIONS),
                "--json", str(tmp / "probe.json"), "--ready", str(ready)),
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the probe did not start"
        time.sleep(0.05)
    return proc


def _stop(probe: subprocess.Popen[bytes], tmp: Path) -> dict[str, Any]:
    probe.send_signal(signal.SIGTERM)  # it stops early and still writes its summary
    assert probe.wait(timeout=60) == 0
    summary: dict[str, Any] = json.loads((tmp / "probe.json").read_text())
    return summary


def test_a_live_resize_keeps_the_elastic_ip_and_the_connections(
    fleet: Fleet, tmp_path: Path
) -> None:
    status = fleet.lab.status()
    az = status["azs"]["a"]
    before = {n: status["instances"][n]["instance_id"] for n in ("a1", "a2", "b1")}
    leader, b_leader = fleet.leader("a"), fleet.leader("b")
    assert leader is not None and b_leader == "b1"
    assert _public_address() == az["eip"]
    doc = parse_document(document(status, lease={"table": LEASE_TABLE}))
    operator = boto3.Session(aws_access_key_id="vpclab", aws_secret_access_key="vpclab")
    sessions = build(doc.aws, None, base=operator).sessions  # the operational role, assumed
    settings = Settings(
        az["zone"], NEW_TYPE, LEASE_TABLE, az["eip_allocation_id"],
        standby_timeout_s=90.0, handover_timeout_s=20.0, poll_s=0.5,
    )  # fmt: skip
    steps: list[Step] = []
    probe = _probe(tmp_path)
    try:
        time.sleep(4)  # the flows exist and the standby holds them
        report = Resize(
            sessions, LabReplacer(fleet), LocalStatus(), settings, on_step=steps.append
        ).run()
        time.sleep(3)  # the flows carry on through the new leader
    finally:
        summary = _stop(probe, tmp_path)
    # the step-by-step account and what the flows saw, with -s
    print(json.dumps(report.as_dict(), indent=2))
    print(json.dumps({k: summary[k] for k in ("survived", "reset", "udp_gap")}))
    assert report.ok and [(s.name, s.state) for s in steps] == [
        ("plan", "ok"), ("launch_template", "ok"), ("replace_standby", "ok"),
        ("handover", "ok"), ("replace_leader", "ok"), ("verify", "ok"),
    ]  # fmt: skip
    assert summary["reset"] == 0 and summary["never_opened"] == 0, summary["failures"]
    assert summary["survived"] >= 0.99 * CONNECTIONS, summary["failures"]

    after = fleet.lab.status()
    assert after["azs"]["a"]["eip"] == az["eip"] and _public_address() == az["eip"]
    ids = {n: after["instances"][n]["instance_id"] for n in ("a1", "a2", "b1")}
    assert ids["a1"] != before["a1"] and ids["a2"] != before["a2"] and ids["b1"] == before["b1"]
    ec2 = fleet.lab.clients()["ec2"]
    found = ec2.describe_instances(InstanceIds=list(ids.values()))["Reservations"]
    types = {i["InstanceId"]: i["InstanceType"] for r in found for i in r["Instances"]}
    assert types == {ids["a1"]: NEW_TYPE, ids["a2"]: NEW_TYPE, ids["b1"]: INSTANCE_TYPE}
    # the former standby's replacement leads, with the NAT address and the route
    new_leader = fleet.leader("a")
    assert new_leader == ("a2" if leader == "a1" else "a1")
    enis = after["instances"][new_leader]["enis"]
    assert after["azs"]["a"]["nat_ip_eni"] == enis["eth0"]["eni_id"]
    assert after["azs"]["a"]["private_default_route_eni"] == enis["eth1"]["eni_id"]
    assert fleet.leader("b") == "b1" and fleet.takeovers()["b1"] == 1  # b never noticed
    assert os.path.exists(STORE)
