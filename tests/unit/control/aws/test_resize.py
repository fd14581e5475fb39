"""The live-resize executor against a moto server: the group's launch template gets a
version of the new type, the standby is replaced first, the lease is handed to the new
standby, then the former leader is replaced; every failure stops at a named step with
the leader untouched when it came before the hand-over.

The gateways are :class:`tests.fakes.gateways.FakeGateways`: real leases on the test's
table, replacement through :class:`~control.aws.resize.AsgReplacer` and moto's group.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from control.aws import OperationalRole, SessionFactory
from control.aws.lease import create_table, read_record
from control.aws.resize import Resize, ResizeAborted, Settings, Step
from tests.fakes.gateways import FakeGateways
from tests.unit.control.aws.conftest import REGION, admin_client, base_session

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

AZ = f"{REGION}a"
OLD, NEW = "c6in.large", "c6in.xlarge"
ROLE = OperationalRole("gw-cross-account-role1", "ext-id-123", account_id="123456789012")


@dataclass
class World:
    ec2: Any
    asg: Any
    sessions: SessionFactory
    gateways: FakeGateways
    group: str
    template: str
    table: str
    allocation: str
    leader: str
    standby: str

    def settings(self, instance_type: str = NEW, **limits: Any) -> Settings:
        options: dict[str, Any] = {"standby_timeout_s": 3.0, "handover_timeout_s": 3.0}
        return Settings(AZ, instance_type, self.table, self.allocation,
                        poll_s=0.05, **(options | limits))  # fmt: skip

    def resize(
        self, instance_type: str = NEW, steps: list[Step] | None = None, **limits: Any
    ) -> Resize:
        return Resize(
            self.sessions, self.gateways, self.gateways, self.settings(instance_type, **limits),
            on_step=None if steps is None else steps.append,
        )  # fmt: skip

    def members(self) -> dict[str, str]:
        group = self.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[self.group])
        ids = [i["InstanceId"] for i in group["AutoScalingGroups"][0]["Instances"]]
        found = self.ec2.describe_instances(InstanceIds=ids)["Reservations"]
        return {i["InstanceId"]: i["InstanceType"] for r in found for i in r["Instances"]}

    def holder(self) -> str | None:
        record = read_record(self.gateways.dynamodb, self.table, AZ)
        return None if record is None else record.holder


def _world(endpoint: str, size: int = 2) -> World:
    ec2, asg = admin_client(endpoint, "ec2"), admin_client(endpoint, "autoscaling")
    dynamodb = admin_client(endpoint, "dynamodb")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.101.0/24", AvailabilityZone=AZ)
    image = ec2.describe_images()["Images"][0]["ImageId"]
    name = f"gw-{uuid.uuid4().hex[:8]}"
    template = ec2.create_launch_template(
        LaunchTemplateName=name, LaunchTemplateData={"ImageId": image, "InstanceType": OLD}
    )["LaunchTemplate"]["LaunchTemplateId"]
    asg.create_auto_scaling_group(
        AutoScalingGroupName=name, LaunchTemplate={"LaunchTemplateId": template},
        MinSize=size, MaxSize=size + 1, DesiredCapacity=size,
        VPCZoneIdentifier=subnet["Subnet"]["SubnetId"],
    )  # fmt: skip
    table = f"lease-{uuid.uuid4().hex[:10]}"
    create_table(dynamodb, table)
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    gateways = FakeGateways(dynamodb, asg, ec2, table, AZ, allocation)
    sessions = SessionFactory(REGION, endpoint, base=base_session(), role=ROLE)
    world = World(ec2, asg, sessions, gateways, name, template, table, allocation, "", "")
    ids = list(world.members())
    for instance_id in ids:
        gateways.join(instance_id)
    gateways.step()
    world.leader = world.holder() or ""
    assert world.leader in ids
    world.standby = next((i for i in ids if i != world.leader), "")
    gateways.state(world.leader)  # the takeover's Elastic IP
    return world


@pytest.fixture
def world(moto_endpoint: str) -> World:
    return _world(moto_endpoint)


def _versions(world: World) -> list[dict[str, Any]]:
    found = world.ec2.describe_launch_template_versions(LaunchTemplateId=world.template)
    versions: list[dict[str, Any]] = found["LaunchTemplateVersions"]
    return versions


def test_standby_first_then_a_hand_over_then_the_leader(world: World) -> None:
    public_ip = world.ec2.describe_addresses(AllocationIds=[world.allocation])["Addresses"][0][
        "PublicIp"
    ]
    steps: list[Step] = []
    report = world.resize(steps=steps).run()
    assert report.ok and report.error is None
    assert [(s.name, s.state) for s in steps] == [
        ("plan", "ok"), ("launch_template", "ok"), ("replace_standby", "ok"),
        ("handover", "ok"), ("replace_leader", "ok"), ("verify", "ok"),
    ]  # fmt: skip
    assert steps == report.steps
    assert world.gateways.replaced == [world.standby, world.leader]
    by_name = {s.name: s for s in steps}
    first_new = by_name["replace_standby"].new_instance_id
    assert by_name["replace_standby"].instance_id == world.standby and first_new
    assert "100 of the leader's 100 flows" in by_name["replace_standby"].detail
    # the lease went to the first replacement, which keeps it while the leader is replaced
    assert world.holder() == first_new
    members = world.members()
    assert set(members.values()) == {NEW} and len(members) == 2
    assert world.standby not in members and world.leader not in members
    group = world.asg.describe_auto_scaling_groups(AutoScalingGroupNames=[world.group])
    assert group["AutoScalingGroups"][0]["LaunchTemplate"]["Version"] == "2"
    versions = {v["VersionNumber"]: v for v in _versions(world)}
    assert versions[2]["LaunchTemplateData"]["InstanceType"] == NEW
    assert versions[2]["LaunchTemplateData"]["ImageId"]  # the rest of the source kept
    assert versions[1]["DefaultVersion"]  # other groups of the template are left alone
    eip = world.ec2.describe_addresses(AllocationIds=[world.allocation])["Addresses"][0]
    assert eip["PublicIp"] == public_ip and eip["InstanceId"] == first_new
    record = read_record(world.gateways.dynamodb, world.table, AZ)
    assert record is not None and record.handover_to is None  # the takeover removed it


def test_a_replacement_never_healthy_stops_before_the_leader(world: World) -> None:
    world.gateways.replacements_healthy = False
    with pytest.raises(ResizeAborted) as aborted:
        world.resize(standby_timeout_s=0.5).run()
    report = aborted.value.report
    assert not report.ok and report.failed_step == "replace_standby"
    assert report.steps[-1].name == "replace_standby" and report.steps[-1].state == "failed"
    assert "did not become a healthy standby" in (report.error or "")
    assert "the leader was not touched" in (report.error or "")
    assert "steps done: plan, launch_template" in (report.error or "")
    undo = f"group {world.group} launches {world.template} version 2 ({NEW}); it launched"
    assert f"{undo} $Default before" in (report.error or "")
    assert world.gateways.replaced == [world.standby]
    assert world.holder() == world.leader and world.members()[world.leader] == OLD
    now = {i["instance_id"]: i for i in report.az_now}
    assert now[world.leader] == {"instance_id": world.leader, "type": OLD, "leader": True}
    assert [i["type"] for i in now.values() if not i["leader"]] == [NEW]


def test_a_standby_whose_sync_lags_is_no_standby_to_hand_over_to(world: World) -> None:
    world.gateways.synced_flows = 10  # 10 of the leader's 100 flows
    with pytest.raises(ResizeAborted, match="conntrack sync caught up") as aborted:
        world.resize(standby_timeout_s=0.5).run()
    assert aborted.value.report.failed_step == "replace_standby"
    assert world.holder() == world.leader and world.gateways.replaced == [world.standby]


def test_a_failover_during_a_step_stops_the_resize_at_once(world: World) -> None:
    def the_leader_fails(new: str) -> None:
        world.gateways.frozen.add(world.leader)  # its agent stops stepping
        world.gateways.leases[world.leader].release("test: the data path failed")

    world.gateways.after_replace = the_leader_fails
    with pytest.raises(ResizeAborted, match="without a hand-over") as aborted:
        world.resize(standby_timeout_s=30.0).run()
    report = aborted.value.report
    assert report.failed_step == "replace_standby" and report.steps[-1].seconds < 10
    new = report.steps[-1].new_instance_id
    assert new is not None and world.holder() == new
    assert f"the lease moved from {world.leader} to {new}" in (report.error or "")


def test_a_hand_over_nobody_takes_is_reported_at_the_hand_over(world: World) -> None:
    def freeze_the_new_standby(step: Step) -> None:
        if step.name == "replace_standby" and step.new_instance_id:
            world.gateways.frozen.add(step.new_instance_id)

    resize = world.resize(handover_timeout_s=0.5)
    resize.on_step = freeze_the_new_standby
    with pytest.raises(ResizeAborted, match=r"^handover: .* did not lead") as aborted:
        resize.run()
    report = aborted.value.report
    assert "the former leader was not replaced" in (report.error or "")
    assert world.gateways.replaced == [world.standby] and world.leader in world.members()


def test_an_unknown_type_changes_nothing(world: World) -> None:
    with pytest.raises(ResizeAborted) as aborted:
        world.resize("x9.bogus").run()
    report = aborted.value.report
    assert report.failed_step == "plan"
    assert "--instance-type: 'x9.bogus' is not an EC2 instance type" in (report.error or "")
    assert "nothing was changed" in (report.error or "")
    assert len(_versions(world)) == 1 and world.gateways.replaced == []


def test_a_group_without_a_standby_is_refused(moto_endpoint: str) -> None:
    world = _world(moto_endpoint, size=1)
    with pytest.raises(ResizeAborted, match="has no standby beside the leader") as aborted:
        world.resize().run()
    assert aborted.value.report.failed_step == "plan" and world.gateways.replaced == []


def test_instances_of_the_type_already_are_left_alone(world: World) -> None:
    report = world.resize(OLD).run()
    assert report.ok
    assert {s.name: s.state for s in report.steps} == {
        "plan": "ok", "launch_template": "ok", "replace_standby": "skipped",
        "handover": "skipped", "replace_leader": "skipped", "verify": "ok",
    }  # fmt: skip
    assert "launches c6in.large already" in report.steps[1].detail
    assert len(_versions(world)) == 1 and world.gateways.replaced == []
    assert world.holder() == world.leader
