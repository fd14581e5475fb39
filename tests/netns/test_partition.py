"""A network partition in AZ a of the VPC lab: the leader is cut off from the lease
table and the EC2 endpoint (the lab's moto server, on its ``mgmt`` link) and from its
standby (both of the standby's addresses: the conntrack sync link and the echo a standby
asks an expired holder with), while its data path -- inside and outside links, forward
chain, NAT -- stays up.

What must hold: the standby finds the lease expired and the holder silent, takes it
over with the next fencing token and moves the NAT address, Elastic IP and private
route to itself; the cut-off leader cannot renew, so its lease runs out on its own clock
(``lost``) and it gives up the NAT address. When the partition heals, the stale leader
writes nothing with its old token: moto's route table, NAT address and Elastic IP
association stay with the new leader, the table keeps the new holder and token, the old
leader reports the lost lease and stays a standby (``fail_back`` off), and the
workload's established connections and new ones go through the new leader.

The partition is an nftables table of the test's own (:data:`PARTITION`) in the
leader's namespace, hooked on input and output only, so forwarded traffic never meets
it; deleting the table heals.

The other partition is the data path's own: a leader whose forwarding drops everything
while its links, IPv4 forwarding and ruleset are all in place (:data:`BLACKHOLE`). Only
the forward probe (``aws.health.forward_probes``, on for the module's fleet) sees it: the
leader releases the lease, the standby takes over and the workloads reach the internet
through it; the broken one stays a standby.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control.aws.lease import Lease, LeaseSettings
from perf.lab.vpc.fleet import LAB_LEASE, Fleet
from perf.lab.vpc.seed import client
from perf.lab.vpc.topology import INET_SERVICE_IP, LEASE_TABLE
from tests.netns.helpers import sh
from tests.netns.vpcfleet import (
    WORKLOAD,
    finish,
    leadership,
    make_healthy,
    probe,
    public_address,
    running_fleet,
)

pytestmark = pytest.mark.timeout(300)
CONNECTIONS = 200
PARTITION = "cvpartition"
BLACKHOLE = "cvblackhole"


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with running_fleet(health={"forward_probes": [f"{INET_SERVICE_IP}:80"]}) as f:
        yield f


@pytest.fixture
def healthy(fleet: Fleet) -> Fleet:
    return make_healthy(fleet)


def _other(leader: str) -> str:
    return "a2" if leader == "a1" else "a1"


def _partition(ns: str, peers: list[str], tmp_path: Path) -> None:
    """Cut ``ns`` off from the management link (moto: DynamoDB, EC2) and from ``peers``;
    forwarding is not hooked."""
    drops_in = " ".join(f"ip saddr {p} drop;" for p in peers)
    drops_out = " ".join(f"ip daddr {p} drop;" for p in peers)
    rules = tmp_path / "partition.nft"
    rules.write_text(
        f"table inet {PARTITION} {{\n"
        f"  chain in {{ type filter hook input priority -400; policy accept;"
        f' iifname "mgmt" drop; {drops_in} }}\n'
        f"  chain out {{ type filter hook output priority -400; policy accept;"
        f' oifname "mgmt" drop; {drops_out} }}\n'
        "}\n"
    )
    out = sh(ns, "nft", "-f", str(rules))
    assert out.returncode == 0, out.stderr


def _heal(ns: str) -> None:
    out = sh(ns, "nft", "delete", "table", "inet", PARTITION)
    assert out.returncode == 0, out.stderr


def _aws_side(fleet: Fleet) -> dict[str, Any]:
    """AZ a as moto has it: the private default route's ENI, the NAT address's ENI, the
    Elastic IP's association, and the lease item (holder, token)."""
    status = fleet.lab.status()
    az = status["azs"]["a"]
    ec2 = client("ec2", fleet.lab.endpoint_url)
    eip = ec2.describe_addresses(AllocationIds=[az["eip_allocation_id"]])["Addresses"][0]
    item = client("dynamodb", fleet.lab.endpoint_url).get_item(
        TableName=LEASE_TABLE, Key={"lease_key": {"S": az["zone"]}}, ConsistentRead=True
    )["Item"]
    return {
        "route_eni": az["private_default_route_eni"],
        "nat_eni": az["nat_ip_eni"],
        "eip_eni": eip.get("NetworkInterfaceId"),
        "eip_private_ip": eip.get("PrivateIpAddress"),
        "holder": item["holder"]["S"],
        "token": int(item["token"]["N"]),
    }


def _owned_by(fleet: Fleet, name: str, token: int) -> dict[str, Any]:
    """What :func:`_aws_side` must say when ``name`` leads AZ a with ``token``."""
    status = fleet.lab.status()
    enis, az = status["instances"][name]["enis"], status["azs"]["a"]
    return {
        "route_eni": enis["eth1"]["eni_id"],
        "nat_eni": enis["eth0"]["eni_id"],
        "eip_eni": enis["eth0"]["eni_id"],
        "eip_private_ip": az["nat_ip"],
        "holder": status["instances"][name]["instance_id"],
        "token": token,
    }


def _fence(fleet: Fleet, name: str) -> Lease:
    """The lease of AZ a as instance ``name`` sees it, for its fence alone."""
    status = fleet.lab.status()
    settings = LeaseSettings(
        table=LEASE_TABLE,
        key=status["azs"]["a"]["zone"],
        holder=status["instances"][name]["instance_id"],
    )
    return Lease(client("dynamodb", fleet.lab.endpoint_url), settings, lambda: True)


def _addresses(ns: str, ifname: str) -> set[str]:
    out = sh(ns, "ip", "-j", "-4", "addr", "show", "dev", ifname)
    assert out.returncode == 0, out.stderr
    return {a["local"] for link in json.loads(out.stdout) for a in link.get("addr_info", [])}


def test_a_partitioned_leader_is_fenced_and_writes_nothing_after_the_heal(
    healthy: Fleet, tmp_path: Path
) -> None:
    old = healthy.leader("a")
    assert old is not None
    new = _other(old)
    ns = healthy.netns(old)
    status = healthy.lab.status()
    nat_ip, eip = status["azs"]["a"]["nat_ip"], status["azs"]["a"]["eip"]
    old_token = healthy.state(old)["aws"]["lease"]["token"]
    assert _aws_side(healthy) == _owned_by(healthy, old, old_token)
    peers = [e["ip"] for e in status["instances"][new]["enis"].values()]
    out = tmp_path / "probe.json"
    running = probe(WORKLOAD["a"], out, seconds=25, connections=CONNECTIONS)
    time.sleep(6)  # the connections are open and synced to the standby
    _partition(ns, peers, tmp_path)
    try:
        healthy.wait("the standby took the lease over", lambda: healthy.role(new) == "leader", 30)

        def lost() -> bool:  # the old leader's own view: it ran out on its clock
            aws = healthy.state(old).get("aws", {})
            return aws.get("role") == "standby" and leadership(aws)[-1:] == ["lost"]

        healthy.wait("the cut-off leader gave the lease up", lost, 30)
        healthy.wait(
            "the new leader's takeover completed",
            lambda: bool(healthy.state(new)["aws"].get("takeover", {}).get("ok")),
            30,
        )
        new_token = healthy.state(new)["aws"]["lease"]["token"]
        assert new_token > old_token
        assert _aws_side(healthy) == _owned_by(healthy, new, new_token)
        assert nat_ip not in _addresses(ns, "eth0")
        # the data path of the cut-off leader was never touched: its own checks pass
        lease = healthy.state(old)["aws"]["lease"]
        assert lease["eligible"] is True and lease["counters"]["renew_errors"] > 0, lease

        def offloaded() -> bool:  # the flows synced before the cut, on the new fast path
            active = int(healthy.state(new).get("offload", {}).get("active", 0))
            return active >= 0.9 * CONNECTIONS

        healthy.wait("the new leader's XDP fast path took the synced flows", offloaded, 20)
    finally:
        _heal(ns)

    def standby_again() -> bool:  # the healed agent reads the table: someone else leads
        lease = healthy.state(old).get("aws", {}).get("lease", {})
        return lease.get("state") == "standby" and lease.get("error") is None

    healthy.wait("the healed old leader reads the table again", standby_again, 30)
    # the old leader's token, presented to the lab's table as its route writer would
    # before a write: refused (the conditional write, not the agent's own belief)
    assert not _fence(healthy, old).still_holds(old_token)
    assert _fence(healthy, new).still_holds(new_token)  # the same check passes the holder
    # several lease periods with both agents talking to moto: nothing moves back
    deadline = time.monotonic() + 2 * (LAB_LEASE["duration_s"] + LAB_LEASE["skew_margin_s"])
    while time.monotonic() < deadline:
        assert _aws_side(healthy) == _owned_by(healthy, new, new_token)
        time.sleep(0.5)
    assert healthy.role(old) == "standby" and healthy.role(new) == "leader"
    assert nat_ip not in _addresses(ns, "eth0")
    assert nat_ip in _addresses(healthy.netns(new), "eth0")
    events = healthy.state(old)["aws"]["lease"]["events"]
    assert leadership(healthy.state(old)["aws"])[-1] == "lost", events
    assert [e["kind"] for e in events if e["token"] == old_token][-1] == "lost", events
    summary = finish(running, out)
    assert summary["reset"] == 0 and summary["never_opened"] == 0, summary["failures"]
    assert summary["survived"] >= 0.99 * summary["connections"], summary["failures"]
    # the UDP stream ran through the cut; the move may lose nothing at all (the standby
    # took over before the old leader's path was missed), never half of it
    assert summary["udp_sent"] > 0
    assert summary["udp_gap"]["lost"] < summary["udp_sent"] / 2, summary["udp_gap"]
    healthy.lab.sync()
    assert public_address(WORKLOAD["a"]) == eip
    assert healthy.leader("b") == "b1"  # the other AZ never noticed


def _probe_state(fleet: Fleet, name: str) -> dict[str, Any]:
    probe_state: dict[str, Any] = fleet.state(name).get("aws", {}).get("forward_probe") or {}
    return probe_state


def test_a_leader_whose_forwarding_drops_everything_hands_the_lease_over(
    healthy: Fleet, tmp_path: Path
) -> None:
    old = healthy.leader("a")
    assert old is not None
    new, ns = _other(old), healthy.netns(old)
    eip = healthy.lab.status()["azs"]["a"]["eip"]

    def probing() -> bool:  # the leader's rounds pass through its forwarding path
        last = _probe_state(healthy, old).get("last") or {}
        return bool(last.get("ok")) and _probe_state(healthy, old).get("counting") is True

    healthy.wait("the leader's forward probe passes", probing, 30)
    assert _probe_state(healthy, new)["counting"] is False  # a standby's does not count
    rounds = _probe_state(healthy, old)["rounds"]
    rules = tmp_path / "blackhole.nft"
    rules.write_text(
        f"table inet {BLACKHOLE} {{\n"
        "  chain blackhole { type filter hook forward priority -400; policy drop; }\n"
        "}\n"
    )
    out = sh(ns, "nft", "-f", str(rules))
    assert out.returncode == 0, out.stderr
    try:
        healthy.wait("the standby took the lease over", lambda: healthy.role(new) == "leader", 30)
        healthy.wait(
            "the new leader's takeover completed",
            lambda: bool(healthy.state(new)["aws"].get("takeover", {}).get("ok")),
            30,
        )
        aws = healthy.state(old)["aws"]
        assert aws["role"] == "standby"
        released = [e for e in aws["lease"]["events"] if e["kind"] == "released"][-1]
        assert "forward probe" in released["reason"] and INET_SERVICE_IP in released["reason"]
        probe_state = _probe_state(healthy, old)
        assert probe_state["rounds"] > rounds and probe_state["failures"] >= 1
        assert probe_state["last"]["ok"] is False
        # the local checks all pass: only the probe saw it
        assert "forward probe" in (aws["lease"].get("health_error") or released["reason"])
        healthy.lab.sync()
        assert public_address(WORKLOAD["a"]) == eip  # through the new leader
        healthy.wait(
            "the new leader's forward probe passes",
            lambda: bool((_probe_state(healthy, new).get("last") or {}).get("ok")),
            30,
        )
    finally:
        sh(ns, "nft", "delete", "table", "inet", BLACKHOLE)
    time.sleep(3)  # healed, but held down: it does not take the lease back
    assert healthy.role(old) == "standby" and healthy.role(new) == "leader"
