"""The config store unreachable on the VPC lab: the gateways keep forwarding with the
last document they applied, say so in status, and nobody takes over because of it; when
the store answers again they converge to its head.

What "unreachable" means here: the agents read the document from SSM Parameter Store
(``ssm:/spectra/config``, the store of an EC2 deployment), the leader lease lives in
DynamoDB. In AWS those are separate regional endpoints, so SSM can be unreachable (an
outage, a broken VPC interface endpoint, a denied policy) while DynamoDB answers; the
lab models exactly that by sending the agents' SSM calls through a relay
(:mod:`perf.lab.vpc.relay`) that the test stops, while the lease calls go to the moto
endpoint directly. DynamoDB unreachable as well is a different failure -- the leader
cannot renew and its lease runs out -- covered by the lease's fencing tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from perf.lab.vpc.fleet import LAB_LEASE, Fleet, document
from tests.netns.helpers import sh
from tests.netns.vpcfleet import WORKLOAD, finish, leadership, make_healthy, probe, running_fleet

pytestmark = pytest.mark.timeout(300)

NAMES = ("a1", "a2", "b1")


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with running_fleet("ssm") as f:
        yield f


@pytest.fixture
def healthy(fleet: Fleet) -> Fleet:
    return make_healthy(fleet)


def _icmp_timeout(fleet: Fleet, name: str) -> int:
    out = sh(fleet.netns(name), "sysctl", "-n", "net.netfilter.nf_conntrack_icmp_timeout")
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def _leases(fleet: Fleet) -> dict[str, tuple[str | None, int | None, int]]:
    """Per instance: its role, its token, how many lease events it has seen."""
    out = {}
    for n in NAMES:
        aws: dict[str, Any] = fleet.state(n)["aws"]
        out[n] = (aws["role"], aws["lease"]["token"], len(aws["lease"]["events"]))
    return out


def test_an_unreachable_store_keeps_the_last_good_document_and_the_leaders(
    healthy: Fleet, tmp_path: Path
) -> None:
    applied = healthy.head()
    leases = _leases(healthy)
    takeovers = healthy.takeovers()
    before = _icmp_timeout(healthy, "a1")
    out = tmp_path / "probe.json"
    running = probe(WORKLOAD["a"], out, seconds=20)
    time.sleep(2)
    healthy.store_down()
    try:
        # a new version lands in the store while the agents cannot read it
        doc = document(healthy.lab.status())
        doc["nat"]["timeouts"] = {"icmp": before + 1}
        version = healthy.publish(doc)
        assert version == applied + 1

        def all_report_it() -> bool:
            return all(
                "ssm read under" in (healthy.state(n).get("store_error") or "") for n in NAMES
            )

        healthy.wait("every agent reported the store error", all_report_it, 30)
        # longer than a lease and its skew margin: a takeover would have happened by now
        time.sleep(2 * (LAB_LEASE["duration_s"] + LAB_LEASE["skew_margin_s"]))
        for n in NAMES:
            st = healthy.state(n)
            assert (st["applied_version"], st["converged"]) == (applied, True), st
            assert st["last_error"] is None, st["last_error"]
            assert _icmp_timeout(healthy, n) == before
        assert _leases(healthy) == leases
        assert healthy.takeovers() == takeovers
    finally:
        healthy.store_up()
    summary = finish(running, out)
    assert summary["reset"] == 0 and summary["survived"] == summary["connections"], summary
    # nothing lost while the store was away (the store went down 2 s into the stream;
    # the stream's very first datagram may be lost to neighbour resolution)
    gap = summary["udp_gap"]
    assert summary["udp_received"] >= summary["udp_sent"] - 1, summary
    assert gap["lost"] == 0 or gap["first_lost_at_s"] < 1.0, gap
    healthy.wait_converged()  # to the head, which moved while the store was away
    for n in NAMES:
        st = healthy.state(n)
        assert st["applied_version"] == version and st["store_error"] is None
        assert _icmp_timeout(healthy, n) == before + 1
    assert _leases(healthy) == leases and healthy.takeovers() == takeovers


def test_an_agent_restarted_while_the_store_is_unreachable_resumes_its_lease(
    healthy: Fleet,
) -> None:
    """The restarted leader cannot read the store; it runs its HA side from the document
    it applied last (kept beside its status) and resumes its lease with the same token
    (the standby leaves an expired lease to a holder whose instance answers)."""
    leader = healthy.leader("a")
    assert leader is not None
    before = healthy.state(leader)
    token, pid = before["aws"]["lease"]["token"], before["pid"]
    healthy.store_down()
    try:
        healthy.kill_agent(leader)
        healthy.start([leader])  # what systemd's Restart= does

        def resumed() -> bool:  # the restarted agent's own state
            st = healthy.state(leader)
            aws = st.get("aws", {})
            return (
                st.get("pid") != pid and bool(st.get("store_error")) and aws.get("role") == "leader"
            )

        healthy.wait("the restarted agent resumed its lease", resumed, 30)
        aws = healthy.state(leader)["aws"]
        assert aws["lease"]["token"] == token
        assert leadership(aws) == ["resumed"], aws["lease"]
        assert healthy.leader("a") == leader and healthy.role(_other(leader)) == "standby"
    finally:
        healthy.store_up()
    healthy.wait_converged()
    assert healthy.state(leader)["aws"]["lease"]["token"] == token


def _other(leader: str) -> str:
    return "a2" if leader == "a1" else "a1"
