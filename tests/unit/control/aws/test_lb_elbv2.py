"""L4 backends synced from an ELBv2 target group through the session factory (moto):
healthy targets join, a deregistered one leaves at the next sync, instance targets
resolve to their private address, draining targets are left out."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from functools import partial

import pytest

from control.aws import OperationalRole, SessionFactory
from control.lb import Check, Target, VirtualService
from control.lb_elbv2 import healthy_ids, read_targets
from control.lb_health import HealthMonitor
from tests.unit.control.aws.conftest import REGION, admin_client, base_session

ROLE = OperationalRole("gw-cross-account-role4", "ext-id-lb", account_id="123456789012")


@pytest.fixture
def listeners() -> Iterator[list[socket.socket]]:
    socks = [socket.create_server((f"127.0.0.{n}", 0)) for n in (1, 2)]
    yield socks
    for s in socks:
        s.close()


def target_group(endpoint: str, name: str) -> str:
    ec2 = admin_client(endpoint, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    elb = admin_client(endpoint, "elbv2")
    group = elb.create_target_group(Name=name, Protocol="TCP", Port=80, VpcId=vpc,
                                    TargetType="ip")["TargetGroups"][0]  # fmt: skip
    arn: str = group["TargetGroupArn"]
    return arn


def test_sync_follows_registration(moto_endpoint: str, listeners: list[socket.socket]) -> None:
    factory = SessionFactory(REGION, moto_endpoint, base=base_session(), role=ROLE)
    arn = target_group(moto_endpoint, "lb-sync")
    elb = admin_client(moto_endpoint, "elbv2")
    a, b = (Target(*s.getsockname()[:2]) for s in listeners)
    elb.register_targets(TargetGroupArn=arn, Targets=[{"Id": t.address, "Port": t.port}
                                                      for t in (a, b)])  # fmt: skip
    assert read_targets(factory.client, arn) == (a, b)

    vs = VirtualService(0, "tg", ("203.0.113.2",), "tcp", 9000, "roundrobin", (), arn,
                        Check("tcp", None, "/", 1.0, 0.5, 2, 2))  # fmt: skip
    changes: list[int] = []
    monitor = HealthMonitor(changes.append)
    monitor.sync = partial(read_targets, factory.client)
    try:
        monitor.configure([vs], sync_seconds=0.3)
        wait = time.monotonic() + 5
        while monitor.healthy(0) != [a, b]:
            assert time.monotonic() < wait, monitor.status()
            time.sleep(0.05)
        status = monitor.status()["tg"]
        assert status["target_group"]["arn"] == arn and status["target_group"]["error"] is None
        assert {k: v["source"] for k, v in status["backends"].items()} == {
            a.key: "target_group", b.key: "target_group"}  # fmt: skip

        elb.deregister_targets(TargetGroupArn=arn, Targets=[{"Id": b.address, "Port": b.port}])
        wait = time.monotonic() + 2
        while monitor.healthy(0) != [a]:  # the next sync (0.3 s) drops it
            assert time.monotonic() < wait, monitor.status()
            time.sleep(0.05)
        assert b.key not in monitor.status()["tg"]["backends"] and 0 in changes
    finally:
        monitor.stop()


def test_instance_targets_resolve_to_their_address(moto_endpoint: str) -> None:
    factory = SessionFactory(REGION, moto_endpoint, base=base_session(), role=ROLE)
    ec2 = admin_client(moto_endpoint, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.30.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.30.1.0/24")["Subnet"]["SubnetId"]
    instance = ec2.run_instances(ImageId="ami-12345678", MinCount=1, MaxCount=1,
                                 SubnetId=subnet)["Instances"][0]  # fmt: skip
    elb = admin_client(moto_endpoint, "elbv2")
    groups = elb.create_target_group(Name="lb-inst", Protocol="TCP", Port=8080, VpcId=vpc,
                                     TargetType="instance")["TargetGroups"]  # fmt: skip
    arn = groups[0]["TargetGroupArn"]
    elb.register_targets(TargetGroupArn=arn, Targets=[{"Id": instance["InstanceId"]}])
    assert read_targets(factory.client, arn) == (Target(instance["PrivateIpAddress"], 8080),)


def test_only_healthy_targets_count() -> None:
    def desc(target: str, state: str) -> dict[str, object]:
        return {"Target": {"Id": target, "Port": 80}, "TargetHealth": {"State": state}}

    answer = {"TargetHealthDescriptions": [desc("10.0.1.1", "healthy"),
              desc("10.0.1.2", "draining"), desc("10.0.1.3", "unhealthy"),
              desc("10.0.1.4", "initial"), desc("10.0.1.5", "unused")]}  # fmt: skip
    assert healthy_ids(answer) == [("10.0.1.1", 80)]
