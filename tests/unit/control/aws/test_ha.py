"""control.aws.ha: two gateway instances of one AZ against moto (EC2, DynamoDB, Auto
Scaling): boot, leadership, takeover after the leader dies, a stale leader fenced out,
hand-over on termination, and an agent restart that keeps the lease. Time is the
lease's injected clock; the periods are driven by the test."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from control.aws import Lease, LeaseSettings
from control.aws.fallback import CrossAzFallback
from control.aws.ha import Ha, Lifecycle
from control.aws.imds import ImdsError, InstanceIdentity
from control.aws.lease import create_table
from control.aws.takeover import Enis, Takeover, Zone
from tests.unit.control.aws.conftest import REGION, FakeClock, admin_client
from tests.unit.control.aws.test_takeover import FakeAddresses
from tests.unit.control.conftest import LIFECYCLE_LOG

pytestmark = pytest.mark.unit

AZ = f"{REGION}a"
NAT = "10.0.101.100"


class Metadata:
    """What Ha asks the instance metadata after boot: the target lifecycle state."""

    def __init__(self) -> None:
        self.target: str | None = None

    def get(self, path: str) -> str:
        if self.target is None:
            raise ImdsError(f"{path}: 404")
        return self.target


@dataclass
class Sync:
    calls: list[str] = field(default_factory=list)

    def become_leader(self) -> dict[str, Any]:
        self.calls.append("leader")
        return {"committed": True}

    def become_standby(self) -> dict[str, Any]:
        self.calls.append("standby")
        return {"standby": True}


@dataclass
class Node:
    ha: Ha
    enis: Enis
    addresses: FakeAddresses
    sync: Sync
    metadata: Metadata
    instance_id: str


@dataclass
class World:
    ec2: Any
    asg: Any
    zone: Zone
    clock: FakeClock
    table: str
    group: str
    nodes: list[Node]

    def default_route(self) -> str:
        table = self.ec2.describe_route_tables(RouteTableIds=list(self.zone.route_table_ids))
        routes = table["RouteTables"][0]["Routes"]
        default = next(r for r in routes if r.get("DestinationCidrBlock") == "0.0.0.0/0")
        return str(default["NetworkInterfaceId"])

    def node(
        self,
        i: int,
        fallback: CrossAzFallback | None = None,
        holder_alive: Callable[[str], bool] | None = None,
        health: Callable[[], bool] = lambda: True,
        launch_timeout_s: float = 300.0,
        **lease_settings: Any,
    ) -> Node:
        """A fresh Ha for instance ``i`` (an agent (re)start; ``health``: its data path)."""
        old = self.nodes[i]
        lease = Lease(
            admin_client_for(self.ec2, "dynamodb"),
            LeaseSettings(
                table=self.table,
                key=AZ,
                holder=old.instance_id,
                duration_s=3.0,
                skew_margin_s=0.5,
                health_successes=1,
                **lease_settings,
            ),
            lambda: True,
            clock=self.clock,
            holder_alive=holder_alive,
        )
        takeover = Takeover(self.zone, old.enis, lambda: self.ec2, lambda: self.ec2, old.addresses)
        ha = Ha(
            old.metadata,  # type: ignore[arg-type]
            lease,
            takeover,
            lambda: self.ec2,
            lambda: self.asg,
            lambda: True,
            health,
            identity=InstanceIdentity(old.instance_id, REGION, AZ, "123456789012", "", ()),
            sync=old.sync,
            lifecycle=Lifecycle(
                self.group, "spectra-launch", "spectra-terminate", launch_timeout_s
            ),
            fallback=fallback,
        )
        self.nodes[i] = Node(ha, old.enis, old.addresses, old.sync, old.metadata, old.instance_id)
        return self.nodes[i]


def admin_client_for(ec2: Any, service: str) -> Any:
    return admin_client(ec2.meta.endpoint_url, service)


@pytest.fixture
def world(moto_endpoint: str) -> World:
    ec2 = admin_client(moto_endpoint, "ec2")
    asg = admin_client(moto_endpoint, "autoscaling")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    public = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.101.0/24", AvailabilityZone=AZ)
    private = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone=AZ)
    group = f"gw-{uuid.uuid4().hex[:8]}"
    asg.create_launch_configuration(
        LaunchConfigurationName=group, ImageId="ami-12c6146b", InstanceType="t3.micro"
    )
    asg.create_auto_scaling_group(
        AutoScalingGroupName=group,
        LaunchConfigurationName=group,
        MinSize=2,
        MaxSize=2,
        VPCZoneIdentifier=public["Subnet"]["SubnetId"],
    )
    for hook, transition in (("spectra-launch", "LAUNCHING"), ("spectra-terminate", "TERMINATING")):
        asg.put_lifecycle_hook(
            LifecycleHookName=hook,
            AutoScalingGroupName=group,
            LifecycleTransition=f"autoscaling:EC2_INSTANCE_{transition}",
        )
    instances = [
        i["InstanceId"]
        for i in asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])[
            "AutoScalingGroups"
        ][0]["Instances"]
    ]
    nodes = []
    for n, instance in enumerate(instances):
        outside = ec2.create_network_interface(
            SubnetId=public["Subnet"]["SubnetId"], PrivateIpAddress=f"10.0.101.{11 + n}"
        )["NetworkInterface"]["NetworkInterfaceId"]
        inside = ec2.create_network_interface(
            SubnetId=private["Subnet"]["SubnetId"], PrivateIpAddress=f"10.0.1.{11 + n}"
        )["NetworkInterface"]["NetworkInterfaceId"]
        enis = Enis(outside, "eth0", inside, 24)
        nodes.append(Node(None, enis, FakeAddresses(), Sync(), Metadata(), instance))  # type: ignore[arg-type]
    rtb = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    ec2.create_route(
        RouteTableId=rtb,
        DestinationCidrBlock="0.0.0.0/0",
        NetworkInterfaceId=nodes[1].enis.inside_eni,
    )
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    table = f"lease-{uuid.uuid4().hex[:10]}"
    create_table(admin_client(moto_endpoint, "dynamodb"), table)
    w = World(ec2, asg, Zone(AZ, NAT, allocation, (rtb,)), FakeClock(), table, group, nodes)
    for i in range(2):
        w.node(i)
    return w


def boot(world: World) -> None:
    for node in world.nodes:
        assert node.ha.boot(threading.Event())


def step(node: Node) -> None:
    """One lease period, and the takeover it started run to its end."""
    node.ha.period()
    node.ha.settle(timeout=30)


def test_boot_turns_off_source_dest_check_and_one_instance_leads(world: World) -> None:
    boot(world)
    for node in world.nodes:
        for eni in (node.enis.outside_eni, node.enis.inside_eni):
            attr = world.ec2.describe_network_interface_attribute(
                NetworkInterfaceId=eni, Attribute="sourceDestCheck"
            )
            assert attr["SourceDestCheck"]["Value"] is False
    a, b = world.nodes
    step(a)
    step(b)
    assert (a.ha.status.role, b.ha.status.role) == ("leader", "standby")
    assert a.ha.status.takeover["ok"], a.ha.status.takeover
    assert world.default_route() == a.enis.inside_eni
    assert a.addresses.held == {("eth0", NAT, 24)} and b.addresses.held == set()
    assert a.sync.calls == ["leader"] and b.sync.calls == []


def test_the_standby_takes_over_when_the_leader_dies_and_a_stale_leader_is_fenced(
    world: World,
) -> None:
    boot(world)
    a, b = world.nodes
    step(a)
    step(b)
    old_token = a.ha.lease.token
    assert old_token is not None
    # a stops renewing (its instance died); b wakes right at expiry + skew margin
    due = b.ha.lease.contend_due_in()
    assert due is not None and 3.0 <= due <= 3.5 + 1e-6
    world.clock.advance(due + 0.01)
    step(b)
    assert b.ha.status.role == "leader" and b.ha.status.takeover["ok"]
    assert world.default_route() == b.enis.inside_eni
    eip = world.ec2.describe_addresses(AllocationIds=[world.zone.allocation_id])["Addresses"][0]
    assert (eip["NetworkInterfaceId"], eip["PrivateIpAddress"]) == (b.enis.outside_eni, NAT)
    assert b.sync.calls == ["leader"]
    # a comes back (a partition healed): its fence fails, it writes nothing, steps down
    assert a.ha.lease.still_holds(old_token) is False
    report = a.ha.takeover.run(old_token, lambda: a.ha.lease.still_holds(old_token))
    assert report.steps == {"nat_address": "fenced"}
    assert world.default_route() == b.enis.inside_eni
    step(a)
    assert a.ha.status.role == "standby"
    assert a.addresses.held == set() and a.sync.calls == ["leader", "standby"]


def test_a_terminating_leader_hands_over_at_once(world: World, moto_dir: Path) -> None:
    boot(world)
    a, b = world.nodes
    step(a)
    step(b)
    a.metadata.target = "Terminated"
    assert a.ha._terminating()
    a.ha.hand_over()
    assert a.ha.status.role == "terminating" and a.addresses.held == set()
    lines = (moto_dir / LIFECYCLE_LOG).read_text().splitlines()
    last = json.loads(lines[-1])
    assert (last["hook"], last["instance_id"], last["result"]) == (
        "spectra-terminate",
        a.instance_id,
        "CONTINUE",
    )
    step(b)  # no waiting for an expiry: the lease was released
    assert b.ha.status.role == "leader" and world.default_route() == b.enis.inside_eni


def test_an_agent_restart_keeps_the_lease_and_its_token(world: World) -> None:
    boot(world)
    a, b = world.nodes
    step(a)
    step(b)
    token = a.ha.lease.token
    world.clock.advance(1.0)
    restarted = world.node(0)
    assert restarted.ha.boot(threading.Event())
    assert restarted.ha.status.boot["health"].detail.startswith("resumed")
    step(restarted)
    assert restarted.ha.lease.token == token and restarted.ha.status.role == "leader"
    world.clock.advance(2.9)  # past the old expiry: the renewal kept it
    step(b)
    assert b.ha.status.role == "standby"
    assert world.default_route() == a.enis.inside_eni


def test_a_slow_takeover_never_delays_a_renewal(world: World) -> None:
    """The takeover's EC2 calls run beside the lease: a period returns while they are
    in flight, and the next one renews the lease."""
    boot(world)
    a, _ = world.nodes
    gate, started = threading.Event(), threading.Event()
    run = a.ha.takeover.run

    def slow(token: int, fence: Any) -> Any:
        started.set()
        assert gate.wait(30)
        return run(token, fence)

    a.ha.takeover.run = slow  # type: ignore[method-assign]
    t0 = time.monotonic()
    a.ha.period()
    assert started.wait(10) and a.ha.status.role == "leader"
    expires = a.ha.lease.status()["expires"]
    world.clock.advance(1.0)
    a.ha.period()  # the takeover is still blocked: no second one, a renewal
    assert time.monotonic() - t0 < 5 and a.ha.status.takeover == {}
    assert a.ha.lease.status()["expires"] == pytest.approx(expires + 1.0)
    gate.set()
    a.ha.settle(timeout=30)
    assert a.ha.status.takeover["ok"] and world.default_route() == a.enis.inside_eni


def test_a_rebuilt_lease_keeps_the_history(world: World) -> None:
    boot(world)
    a, _ = world.nodes
    step(a)
    before = a.ha.lease.status()
    rebuilt = world.node(0)
    rebuilt.ha.lease.inherit(a.ha.lease)
    after = rebuilt.ha.lease.status()
    assert after["counters"] == before["counters"] and after["counters"]["takeovers"] == 1
    assert after["events"] == before["events"]


class FallbackRecorder(CrossAzFallback):
    """Records what Ha asks of the cross-AZ fallback (control.aws.fallback has its own
    tests against moto)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []

    def step(self, token: int) -> None:
        self.calls.append(("step", token))

    def release_all(self, reason: str) -> None:
        self.calls.append(("release_all", reason))

    def status(self) -> dict[str, Any]:
        return {"enabled": True, "calls": len(self.calls)}


def test_the_fallback_runs_after_the_own_takeover_and_ends_with_the_lease(world: World) -> None:
    fallback = FallbackRecorder()
    node = world.node(0, fallback=fallback)
    assert node.ha.boot(threading.Event())
    step(node)  # acquires; the worker runs the AZ's own takeover first
    assert node.ha.status.role == "leader" and node.ha.status.takeover["ok"]
    assert fallback.calls == []
    token = node.ha.lease.token
    step(node)
    step(node)
    assert fallback.calls == [("step", token), ("step", token)]
    assert node.ha.as_dict()["cross_az_fallback"] == {"enabled": True, "calls": 2}
    world.clock.advance(10)  # the lease ran out unrenewed and the other instance took it
    other = world.node(1)
    assert other.ha.boot(threading.Event())
    step(other)
    step(node)
    assert node.ha.status.role == "standby"
    assert fallback.calls[-1] == ("release_all", "this instance no longer leads its own AZ")


ADDRESSES = ("10.0.1.10", "10.0.1.11")


def _graceful(world: World, answering: set[str], grace: float = 10.0) -> tuple[Node, Node]:
    """Both instances with the restart grace, ``answering`` the addresses that answer."""
    for i in (0, 1):
        world.node(i, None, answering.__contains__, address=ADDRESSES[i], restart_grace_s=grace)
    boot(world)
    a, b = world.nodes
    step(a)
    step(b)
    assert (a.ha.status.role, b.ha.status.role) == ("leader", "standby")
    return a, b


def test_a_standby_leaves_the_lease_to_a_restarting_agent_whose_instance_answers(
    world: World,
) -> None:
    a, b = _graceful(world, set(ADDRESSES))
    token = a.ha.lease.token
    world.clock.advance(8.0)  # the agent is gone for longer than the lease (3 s)
    step(b)
    step(b)
    assert b.ha.status.role == "standby" and world.default_route() == a.enis.inside_eni
    lease = b.ha.lease.status()
    assert lease["counters"]["deferrals"] == 1 and lease["deferred"]["holder"] == a.instance_id
    restarted = world.node(0, None, set(ADDRESSES).__contains__, address=ADDRESSES[0],
                           restart_grace_s=10.0)  # fmt: skip
    assert restarted.ha.boot(threading.Event())  # resumes the expired, untaken lease
    step(restarted)
    assert restarted.ha.lease.token == token and restarted.ha.status.role == "leader"
    step(b)
    assert b.ha.status.role == "standby" and b.ha.lease.status()["deferred"] is None
    assert [e["kind"] for e in restarted.ha.lease.status()["events"]] == ["resumed"]


def test_a_dead_holder_is_taken_over_at_expiry_and_a_silent_agent_after_the_grace(
    world: World,
) -> None:
    a, b = _graceful(world, {ADDRESSES[1]})  # a's instance does not answer: dead
    world.clock.advance(3.6)  # expiry + skew margin
    step(b)
    assert b.ha.status.role == "leader" and b.ha.lease.status()["counters"]["deferrals"] == 0
    step(a)  # a was only stalled: its late renewal finds the token moved on
    assert a.ha.status.role == "standby"

    answering = set(ADDRESSES)
    b2 = world.node(1, None, answering.__contains__, address=ADDRESSES[1], restart_grace_s=5)
    a2 = world.node(0, None, answering.__contains__, address=ADDRESSES[0], restart_grace_s=5)
    assert b2.ha.boot(threading.Event()) and a2.ha.boot(threading.Event())
    step(b2)
    step(a2)
    assert (b2.ha.status.role, a2.ha.status.role) == ("leader", "standby")
    world.clock.advance(3.6 + 4.0)  # b2's agent hangs; its instance answers
    step(a2)
    assert a2.ha.status.role == "standby"
    world.clock.advance(1.5)  # past expiry + skew + grace
    step(a2)
    assert a2.ha.status.role == "leader"


def test_a_late_renewal_keeps_a_lease_nobody_took(world: World) -> None:
    """A leader stalled past its lease (a slow write, a paused process) keeps it with
    the same token when no standby took it: no flap."""
    boot(world)
    a, b = world.nodes
    step(a)
    step(b)
    token = a.ha.lease.token
    world.clock.advance(3.2)  # past a's lease, before b may take over (skew margin)
    assert a.ha.lease.token is None
    step(a)
    assert a.ha.lease.token == token and a.ha.status.role == "leader"
    assert a.ha.lease.status()["counters"]["lost"] == 0


def test_a_deferred_holder_is_given_up_only_after_three_silent_echoes(world: World) -> None:
    answering = set(ADDRESSES)
    _, b = _graceful(world, answering)
    world.clock.advance(3.6)  # expired: a answers, b waits
    step(b)
    assert b.ha.status.role == "standby"
    answering.discard(ADDRESSES[0])  # a loaded host misses an echo or two
    world.clock.advance(0.5)
    step(b)
    world.clock.advance(0.5)
    step(b)
    assert b.ha.status.role == "standby" and b.ha.lease.status()["deferred"] is not None
    world.clock.advance(0.5)
    step(b)  # the third silent echo in a row: a's instance is gone
    assert b.ha.status.role == "leader"
