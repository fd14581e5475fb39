"""High availability on the VPC simulator, with the product's own agents (``spectra run
--aws``) on three gateway instances (a1, a2 in AZ a; b1 in AZ b):

* each AZ elects one leader, which moves the NAT address, Elastic IP and private route
  to itself; workloads reach the internet as their AZ's Elastic IP;
* the leader instance dies (every process SIGKILLed, links down): the standby takes
  over and 200 established TCP connections and a UDP stream carry on, no reset, and
  the new leader's XDP fast path takes them from conntrackd's committed entries;
* the leader's own data path fails: it releases the lease, the standby takes over,
  and it does not take it back when it recovers (``fail_back`` off);
* the leader's agent alone is killed and stays down longer than the lease: no failover
  (the standby waits while the leader's instance answers), the restarted agent resumes
  the lease with its token while the pinned data plane keeps forwarding.

Timings are measured by ``python -m perf failover``; here only what must hold.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from perf.lab.vpc.fleet import LAB_LEASE, Fleet
from tests.netns.helpers import sh
from tests.netns.vpcfleet import WORKLOAD, leadership, make_healthy, running_fleet
from tests.netns.vpcfleet import finish as _finish
from tests.netns.vpcfleet import probe as _probe
from tests.netns.vpcfleet import public_address as _public_address

pytestmark = pytest.mark.timeout(300)
CONNECTIONS = 200


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with running_fleet() as f:
        yield f


@pytest.fixture
def healthy(fleet: Fleet) -> Fleet:
    """Every instance up with its agent, every AZ led, the mirror in step."""
    return make_healthy(fleet)


def _other(leader: str) -> str:
    return "a2" if leader == "a1" else "a1"


def test_each_az_has_one_leader_and_its_elastic_ip(healthy: Fleet) -> None:
    status = healthy.lab.status()
    for az in ("a", "b"):
        leader = healthy.leader(az)
        assert leader is not None
        info = status["azs"][az]
        enis = status["instances"][leader]["enis"]
        assert info["private_default_route_eni"] == enis["eth1"]["eni_id"]
        assert info["nat_ip_eni"] == enis["eth0"]["eni_id"]
        assert _public_address(WORKLOAD[az]) == info["eip"]
    assert healthy.role(_other(healthy.leader("a") or "")) == "standby"
    for name in ("a1", "a2", "b1"):
        aws = healthy.state(name)["aws"]
        assert {k: v["state"] for k, v in aws["boot"].items()} == dict.fromkeys(
            ("imds", "source_dest_check", "converge", "health", "lease", "lifecycle"), "ok"
        ), aws["boot"]
        for eni in status["instances"][name]["enis"].values():
            assert eni["source_dest_check"] is False
    launched = {
        a["instance_id"]
        for a in healthy.lab.lifecycle_actions()
        if a["hook"] == "spectra-launch" and a["result"] == "CONTINUE"
    }
    assert launched == {status["instances"][n]["instance_id"] for n in ("a1", "a2", "b1")}


def test_killing_the_leader_keeps_established_connections(healthy: Fleet, tmp_path: Path) -> None:
    leader = healthy.leader("a")
    assert leader is not None
    before = _public_address(WORKLOAD["a"])
    out = tmp_path / "probe.json"
    probe = _probe(WORKLOAD["a"], out, seconds=20, connections=CONNECTIONS)
    time.sleep(6)
    healthy.lab.kill_instance(leader)
    healthy.wait("the standby took over", lambda: healthy.leader("a") == _other(leader), 30)

    def offloaded() -> bool:  # conntrackd's committed entries, back on the fast path
        offload = healthy.state(_other(leader)).get("offload", {})
        return int(offload.get("active", 0)) >= 0.9 * CONNECTIONS

    healthy.wait("the new leader's XDP fast path took the synced flows", offloaded, 10)
    summary = _finish(probe, out)
    assert summary["reset"] == 0 and summary["never_opened"] == 0, summary["failures"]
    assert summary["survived"] >= 0.99 * summary["connections"], summary["failures"]
    # the UDP stream lost packets only while the path moved, and then resumed
    assert 0 < summary["udp_gap"]["lost"] < summary["udp_sent"] / 2, summary["udp_gap"]
    new = healthy.state(_other(leader))["aws"]
    assert new["takeover"]["ok"] and leadership(new)[-1] == "took_over"
    assert _public_address(WORKLOAD["a"]) == before
    assert healthy.leader("b") == "b1"  # the other AZ never noticed


def test_the_agent_alone_killed_is_no_failover(healthy: Fleet, tmp_path: Path) -> None:
    """The agent stays down longer than the lab's lease (2 s): the standby finds the
    lease expired, but the leader's instance still answers on its inside address, so it
    waits (the restart grace); the restarted agent resumes the lease with its token and
    the pinned data plane never stopped forwarding."""
    leader = healthy.leader("a")
    assert leader is not None
    standby = _other(leader)
    before = healthy.state(leader)
    token, pid = before["aws"]["lease"]["token"], before["pid"]
    deferrals = healthy.state(standby)["aws"]["lease"]["counters"]["deferrals"]
    takeovers = healthy.takeovers()
    out = tmp_path / "probe.json"
    probe = _probe(WORKLOAD["a"], out, seconds=14)
    time.sleep(3)
    healthy.kill_agent(leader)
    down = LAB_LEASE["duration_s"] + LAB_LEASE["skew_margin_s"] + 1.0
    healthy.wait(
        "the standby waits for the restarting agent",
        lambda: healthy.state(standby)["aws"]["lease"]["counters"]["deferrals"] > deferrals,
        down + 5,
    )
    healthy.start([leader])  # what systemd's Restart= does

    def resumed() -> bool:  # the restarted agent's own state, not the killed one's
        state = healthy.state(leader)
        aws = state.get("aws", {})
        return (
            state.get("pid") != pid
            and aws.get("role") == "leader"
            and aws["boot"]["lease"]["state"] == "ok"
        )

    healthy.wait("the restarted agent resumed its lease", resumed, 30)
    summary = _finish(probe, out)
    aws = healthy.state(leader)["aws"]
    assert aws["lease"]["token"] == token and "resumed" in aws["boot"]["health"]["detail"]
    assert leadership(aws) == ["resumed"], aws["lease"]["events"]
    # the restarted agent counts from zero: a resumed lease is no takeover
    assert healthy.takeovers() == takeovers | {leader: 0}
    assert healthy.role(standby) == "standby"
    assert healthy.state(standby)["aws"]["lease"]["deferred"] is None
    assert summary["reset"] == 0 and summary["survived"] == summary["connections"], summary
    assert summary["udp_gap"]["lost"] == 0, summary["udp_gap"]


def test_a_leader_whose_data_path_fails_hands_over_and_does_not_take_it_back(
    healthy: Fleet,
) -> None:
    leader = healthy.leader("a")
    assert leader is not None
    ns = healthy.netns(leader)
    assert sh(ns, "ip", "link", "set", "eth0", "down").returncode == 0
    try:
        healthy.wait("the standby took over", lambda: healthy.leader("a") == _other(leader), 30)

        def released() -> bool:
            events = healthy.state(leader).get("aws", {}).get("lease", {}).get("events", [])
            return bool(events) and events[-1]["kind"] == "released"

        healthy.wait("the old leader reported its release", released, 10)
        event = healthy.state(leader)["aws"]["lease"]["events"][-1]
        assert "health" in event["reason"], event
        healthy.lab.sync()
        assert _public_address(WORKLOAD["a"]) == healthy.lab.status()["azs"]["a"]["eip"]
    finally:
        assert sh(ns, "ip", "link", "set", "eth0", "up").returncode == 0

    def eligible_standby() -> bool:
        lease = healthy.state(leader).get("aws", {}).get("lease", {})
        return lease.get("state") == "standby" and lease.get("eligible") is True

    healthy.wait("the old leader is healthy again", eligible_standby, 20)
    time.sleep(2)  # more than health_successes periods while eligible: no fail-back
    assert healthy.leader("a") == _other(leader) and healthy.role(leader) == "standby"
