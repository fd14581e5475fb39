"""perf.lab.awsfake: the AWS behaviours the lab's moto server adds, through boto3 against a
patched in-process moto server (lifecycle completion, address reassignment)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

from perf.lab import awsfake

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    awsfake.patch()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def test_a_secondary_ip_moves_only_with_reassignment(endpoint: str) -> None:
    ec2 = _client("ec2", endpoint)
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    a, b = (
        ec2.create_network_interface(SubnetId=subnet)["NetworkInterface"]["NetworkInterfaceId"]
        for _ in range(2)
    )
    ec2.assign_private_ip_addresses(NetworkInterfaceId=a, PrivateIpAddresses=["10.9.1.99"])
    with pytest.raises(ClientError, match="AllowReassignment"):
        ec2.assign_private_ip_addresses(NetworkInterfaceId=b, PrivateIpAddresses=["10.9.1.99"])
    ec2.assign_private_ip_addresses(
        NetworkInterfaceId=b, PrivateIpAddresses=["10.9.1.99"], AllowReassignment=True
    )
    held = {
        e["NetworkInterfaceId"]: {p["PrivateIpAddress"] for p in e["PrivateIpAddresses"]}
        for e in ec2.describe_network_interfaces(NetworkInterfaceIds=[a, b])["NetworkInterfaces"]
    }
    assert "10.9.1.99" in held[b] and "10.9.1.99" not in held[a]
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.associate_address(
        AllocationId=allocation, NetworkInterfaceId=b, PrivateIpAddress="10.9.1.99"
    )
    eip = ec2.describe_addresses(AllocationIds=[allocation])["Addresses"][0]
    assert (eip["NetworkInterfaceId"], eip["PrivateIpAddress"]) == (b, "10.9.1.99")


def test_lifecycle_actions_are_checked_recorded_and_applied(endpoint: str) -> None:
    ec2, asg = _client("ec2", endpoint), _client("autoscaling", endpoint)
    vpc = ec2.create_vpc(CidrBlock="10.8.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.8.1.0/24")["Subnet"]["SubnetId"]
    asg.create_launch_configuration(
        LaunchConfigurationName="lc", ImageId="ami-12c6146b", InstanceType="t3.micro"
    )
    asg.create_auto_scaling_group(
        AutoScalingGroupName="gw-a",
        LaunchConfigurationName="lc",
        MinSize=1,
        MaxSize=1,
        VPCZoneIdentifier=subnet,
    )
    asg.put_lifecycle_hook(
        LifecycleHookName="launch",
        AutoScalingGroupName="gw-a",
        LifecycleTransition="autoscaling:EC2_INSTANCE_LAUNCHING",
    )
    instance = asg.describe_auto_scaling_groups(AutoScalingGroupNames=["gw-a"])[
        "AutoScalingGroups"
    ][0]["Instances"][0]["InstanceId"]
    with pytest.raises(ClientError, match="No Lifecycle Hook"):
        asg.complete_lifecycle_action(
            LifecycleHookName="nope",
            AutoScalingGroupName="gw-a",
            InstanceId=instance,
            LifecycleActionResult="CONTINUE",
        )
    asg.record_lifecycle_action_heartbeat(
        LifecycleHookName="launch", AutoScalingGroupName="gw-a", InstanceId=instance
    )
    asg.complete_lifecycle_action(
        LifecycleHookName="launch",
        AutoScalingGroupName="gw-a",
        InstanceId=instance,
        LifecycleActionResult="ABANDON",
    )
    assert [(a["action"], a["instance"], a["result"]) for a in awsfake.LIFECYCLE_ACTIONS[-2:]] == [
        ("heartbeat", instance, ""),
        ("complete", instance, "ABANDON"),
    ]
    state = asg.describe_auto_scaling_instances(InstanceIds=[instance])["AutoScalingInstances"]
    assert state[0]["LifecycleState"] == "Terminating"
