"""Each fleet template created as a stack in moto's CloudFormation (a moto server in a
subprocess, :mod:`tests.unit.deploy.motocfn`), then the resources read back through the
services' own APIs: what the HA design (``control/aws/takeover.py``,
``perf/lab/vpc/seed.py``) expects to exist is there and wired together."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from control.aws.lease import KEY as LEASE_KEY
from control.aws.stackcheck import load_template
from control.config.aws import Aws as AwsSection
from control.userdata import parse_user_data

pytestmark = pytest.mark.timeout(180)

CFN = Path(__file__).resolve().parents[3] / "deploy" / "cloudformation"
REGION = "us-east-1"
NOT_IN_MOTO = {
    "AWS::EC2::EIPAssociation",  # associated by hand below, as CloudFormation would
    "AWS::EC2::VPCEndpointService",
}
SKIPPED = {"AWS::ElasticLoadBalancingV2::Listener"}  # moto: HTTP(S) only (motocfn.py)
"""Resource types moto's CloudFormation skips; the tests check everything else."""


def template(name: str) -> dict[str, Any]:
    return load_template((CFN / name).read_text())


def test_the_types_moto_skips_are_listed() -> None:
    from moto.backends import get_backend
    from moto.cloudformation.parsing import get_model_map

    for service in ("ec2", "autoscaling", "iam", "dynamodb", "elbv2"):
        get_backend(service)  # type: ignore[call-overload]
    used = {
        r["Type"]
        for n in ("new-vpc.yaml", "existing-vpc.yaml", "gwlb.yaml")
        for r in template(n)["Resources"].values()
    }
    assert used - set(get_model_map()) == NOT_IN_MOTO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    port = _free_port()
    argv = [sys.executable, str(Path(__file__).with_name("motocfn.py")), "127.0.0.1", str(port)]
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    assert proc.poll() is None, "the moto server exited"
                    assert time.monotonic() < deadline, "the moto server did not listen"
                    time.sleep(0.2)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(10)


def client(endpoint: str, service: str) -> Any:
    session: Any = boto3.session.Session()
    return session.client(
        service,
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"max_attempts": 2}),
    )


def create(
    endpoint: str, name: str, params: dict[str, str], active: set[str]
) -> tuple[str, dict[str, str]]:
    """Create the stack; every resource moto implements whose condition is in ``active``
    (or that has none) must be in it, complete."""
    cf = client(endpoint, "cloudformation")
    stack = f"t-{uuid.uuid4().hex[:8]}"
    cf.create_stack(
        StackName=stack,
        TemplateBody=(CFN / name).read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    found = cf.describe_stacks(StackName=stack)["Stacks"][0]
    assert found["StackStatus"] == "CREATE_COMPLETE", found.get("StackStatusReason")
    made = {
        r["LogicalResourceId"]: r["ResourceStatus"]
        for r in cf.list_stack_resources(StackName=stack)["StackResourceSummaries"]
        if r["LogicalResourceId"]
    }
    wanted = {
        logical
        for logical, res in template(name)["Resources"].items()
        if res["Type"] not in NOT_IN_MOTO | SKIPPED and res.get("Condition", "") in active | {""}
    }
    assert set(made) == wanted
    assert set(made.values()) == {"CREATE_COMPLETE"}
    return stack, {o["OutputKey"]: o["OutputValue"] for o in found.get("Outputs", [])}


def image(endpoint: str) -> str:
    return str(client(endpoint, "ec2").describe_images()["Images"][0]["ImageId"])


def fleet_params(endpoint: str, name: str, zones: int) -> dict[str, str]:
    out = {
        "Name": name,
        "ZoneCount": str(zones),
        "ZoneA": "us-east-1a",
        "ZoneB": "us-east-1b",
        "ImageId": image(endpoint),
        "ManagementCidr": "203.0.113.0/24",
        "ExternalId": "ext-123",
        "SsmPrefix": f"/{name}/config",
    }
    if zones == 3:
        out["ZoneC"] = "us-east-1c"
    return out


def check_security_groups(ec2: Any, eni_id: str) -> None:
    """Management (SSH, the API, its HTTPS port) only from ManagementCidr; nothing open
    to the internet."""
    (eni,) = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni_id])["NetworkInterfaces"]
    (outside,) = ec2.describe_security_groups(GroupIds=[g["GroupId"] for g in eni["Groups"]])[
        "SecurityGroups"
    ]
    vpc = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [outside["VpcId"]]}])[
        "SecurityGroups"
    ]
    rules = [r for g in vpc for r in g["IpPermissions"]]
    assert rules, "no ingress rule at all"
    assert all(c["CidrIp"] != "0.0.0.0/0" for r in rules for c in r.get("IpRanges", []))
    management = {
        r.get("FromPort"): {c["CidrIp"] for c in r["IpRanges"]}
        for r in outside["IpPermissions"]
        if r.get("FromPort") in (22, 8080, 443)
    }
    assert management == {port: {"203.0.113.0/24"} for port in (22, 8080, 443)}


def check_fleet(
    endpoint: str,
    name: str,
    outputs: dict[str, str],
    zones: str,
    *,
    routes: bool = True,
    role: bool = True,
    spot: bool = False,
    target_group: str | None = None,
) -> None:
    ec2 = client(endpoint, "ec2")
    asg = client(endpoint, "autoscaling")
    for z in zones:
        eni_id = outputs[f"GatewayEni{z}"]
        (eni,) = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni_id])["NetworkInterfaces"]
        secondary = [p["PrivateIpAddress"] for p in eni["PrivateIpAddresses"] if not p["Primary"]]
        assert secondary == [outputs[f"NatAddress{z}"]]
        tags = {t["Key"]: t["Value"] for t in eni["TagSet"]}
        assert tags["spectra:deployment"] == name and tags["spectra:role"] == "nat"
        # the EIP association moto skips, done as CloudFormation would
        ec2.associate_address(
            AllocationId=outputs[f"ElasticIpAllocation{z}"],
            NetworkInterfaceId=eni_id,
            PrivateIpAddress=outputs[f"NatAddress{z}"],
        )
        (addr,) = ec2.describe_addresses(AllocationIds=[outputs[f"ElasticIpAllocation{z}"]])[
            "Addresses"
        ]
        assert addr["PublicIp"] == outputs[f"ElasticIp{z}"]
        dashboards = (outputs[f"DashboardUrl{z}"], outputs[f"DashboardHttpsUrl{z}"])
        assert dashboards == (
            f"http://{addr['PublicIp']}:8080/",
            f"https://{addr['PublicIp']}:443/",
        )
        # the instance role's AssociateAddress / AssignPrivateIpAddresses are conditioned
        # on this tag: the Elastic IP and the instances' ENIs must carry it
        assert {"Key": "spectra:deployment", "Value": name} in addr["Tags"]
        (rtb,) = ec2.describe_route_tables(RouteTableIds=[outputs[f"PrivateRouteTable{z}"]])[
            "RouteTables"
        ]
        default = [r for r in rtb["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0"]
        assert [r.get("NetworkInterfaceId") for r in default] == ([eni_id] if routes else [])
        (group,) = asg.describe_auto_scaling_groups(
            AutoScalingGroupNames=[outputs[f"AutoScalingGroup{z}"]]
        )["AutoScalingGroups"]
        assert group["AutoScalingGroupName"] == f"{name}-gw-{z.lower()}"
        assert (group["MinSize"], group["MaxSize"]) == (2, 3)
        hooks = asg.describe_lifecycle_hooks(AutoScalingGroupName=group["AutoScalingGroupName"])
        transitions = {
            h["LifecycleHookName"]: h["LifecycleTransition"] for h in hooks["LifecycleHooks"]
        }
        assert transitions == {
            "spectra-launch": "autoscaling:EC2_INSTANCE_LAUNCHING",
            "spectra-terminate": "autoscaling:EC2_INSTANCE_TERMINATING",
        }
        assert group.get("TargetGroupARNs", []) == ([target_group] if target_group else [])
        if spot:
            mixed = group["MixedInstancesPolicy"]
            assert mixed["InstancesDistribution"]["OnDemandBaseCapacity"] == 1
            assert mixed["InstancesDistribution"]["OnDemandPercentageAboveBaseCapacity"] == 0
            lt_id = mixed["LaunchTemplate"]["LaunchTemplateSpecification"]["LaunchTemplateId"]
        else:
            assert not group.get("MixedInstancesPolicy")  # moto answers {}
            lt_id = group["LaunchTemplate"]["LaunchTemplateId"]
        (version,) = ec2.describe_launch_template_versions(LaunchTemplateId=lt_id)[
            "LaunchTemplateVersions"
        ]
        data = version["LaunchTemplateData"]
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        assert [n["DeviceIndex"] for n in data["NetworkInterfaces"]] == [0, 1]
        (eni_tags,) = [
            t["Tags"] for t in data["TagSpecifications"] if t["ResourceType"] == "network-interface"
        ]
        assert {"Key": "spectra:deployment", "Value": name} in eni_tags
        raw = base64.b64decode(data["UserData"])
        parse_user_data(raw)  # the first boot's own parser accepts it (unknown keys refused)
        user = json.loads(raw)
        assert user["mode"] == "fleet" and user["name"] == name
        assert user["az"] == f"us-east-1{z.lower()}"
        assert user["store"] == f"ssm:/{name}/config"
        assert user["lease_table"] == outputs["LeaseTableName"]
        assert user["admin_token_parameter"] == outputs["AdminTokenParameter"]
        if role:
            assert user["operational_role"] == {
                "name": f"{name}-cross-account-role1",
                "external_id": "ext-123",
                "account": "123456789012",
            }
        else:
            assert "operational_role" not in user
    check_security_groups(ec2, outputs[f"GatewayEni{zones[0]}"])
    section = AwsSection.model_validate({"zones": json.loads(outputs["AwsZones"])})
    assert sorted(section.zones) == [f"us-east-1{z.lower()}" for z in zones]
    for z in zones:
        zone = section.zones[f"us-east-1{z.lower()}"]
        assert str(zone.nat_address) == outputs[f"NatAddress{z}"]
        assert zone.elastic_ip_allocation_id == outputs[f"ElasticIpAllocation{z}"]
        assert zone.route_tables == [outputs[f"PrivateRouteTable{z}"]]
    table = client(endpoint, "dynamodb").describe_table(TableName=outputs["LeaseTableName"])
    assert table["Table"]["KeySchema"] == [{"AttributeName": LEASE_KEY, "KeyType": "HASH"}]
    iam = client(endpoint, "iam")
    role = outputs["InstanceRoleArn"].rsplit("/", 1)[1]
    assert iam.get_role(RoleName=role)["Role"]["Arn"] == outputs["InstanceRoleArn"]
    assert iam.list_role_policies(RoleName=role)["PolicyNames"] == ["spectra-instance"]
    assert outputs["AdminTokenParameter"] == f"/{name}/config/admin-token"


@pytest.mark.parametrize("zones", [2, 3])
def test_new_vpc_stack(endpoint: str, zones: int) -> None:
    name = f"n{zones}{uuid.uuid4().hex[:6]}"
    params = fleet_params(endpoint, name, zones)
    spot = zones == 3
    if spot:
        params["Spot"] = "standbys"
    active = {"CreateEndpoints", *(["ThirdZone", "UseSpot"] if zones == 3 else [])}
    _, out = create(endpoint, "new-vpc.yaml", params, active)
    check_fleet(endpoint, name, out, "ABC"[:zones], spot=spot)
    ec2 = client(endpoint, "ec2")
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [out["VpcId"]]}])
    assert len(subnets["Subnets"]) == 2 * zones
    endpoints = ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [out["VpcId"]]}])
    assert {e["ServiceName"].rsplit(".", 1)[1] for e in endpoints["VpcEndpoints"]} == {
        "dynamodb",
        "ssm",
        "sts",
        "ec2",
        "autoscaling",
    }
    assert ("GatewayEniC" in out) == (zones == 3)


def network(ec2: Any, vpc: str, subnets: tuple[str, str], table: str) -> dict[str, str]:
    """Per zone A and B in ``vpc``: two subnets and a route table, as stack parameters."""
    base = ec2.describe_vpcs(VpcIds=[vpc])["Vpcs"][0]["CidrBlock"].rsplit(".", 2)[0]
    out = {}
    for i, z in enumerate("AB"):
        for n, kind in enumerate(subnets):
            out[f"{kind}{z}"] = ec2.create_subnet(
                VpcId=vpc,
                CidrBlock=f"{base}.{100 * n + i}.0/24",
                AvailabilityZone=f"us-east-1{z.lower()}",
            )["Subnet"]["SubnetId"]
        out[f"{table}{z}"] = ec2.create_route_table(VpcId=vpc)["RouteTable"]["RouteTableId"]
    return out


def existing_params(endpoint: str, name: str) -> dict[str, str]:
    """A VPC with public and private subnets and private route tables in two zones."""
    ec2 = client(endpoint, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    params = fleet_params(endpoint, name, 2)
    params.update(VpcId=vpc, VpcCidr="10.9.0.0/16")
    params.update(network(ec2, vpc, ("PublicSubnet", "PrivateSubnet"), "PrivateRouteTable"))
    return params


@pytest.mark.parametrize("routes", [True, False])
def test_existing_vpc_stack(endpoint: str, routes: bool) -> None:
    name = f"e{uuid.uuid4().hex[:6]}"
    params = existing_params(endpoint, name)
    vpc = params["VpcId"]
    tg = client(endpoint, "elbv2").create_target_group(
        Name=f"{name}-tg", Protocol="HTTP", Port=80, VpcId=vpc
    )["TargetGroups"][0]["TargetGroupArn"]
    params.update(GwlbTargetGroupArn=tg, CreateDefaultRoutes=str(routes).lower())
    if not routes:  # and no operational role in the user data either
        params["ExternalId"] = ""
    active = {"HasGwlb", *(["CreateRoutes", "HasOperationalRole"] if routes else [])}
    _, out = create(endpoint, "existing-vpc.yaml", params, active)
    check_fleet(endpoint, name, out, "AB", routes=routes, role=routes, target_group=tg)
    assert "VpcId" not in out


def test_gwlb_stack(endpoint: str) -> None:
    ec2 = client(endpoint, "ec2")
    vpc = ec2.create_vpc(CidrBlock="10.8.0.0/16")["Vpc"]["VpcId"]
    params = {"Name": f"g{uuid.uuid4().hex[:6]}", "VpcId": vpc}
    params.update(network(ec2, vpc, ("ApplianceSubnet", "EndpointSubnet"), "ProtectedRouteTable"))
    _, out = create(endpoint, "gwlb.yaml", params, {"CreateRoutesAB"})
    elb = client(endpoint, "elbv2")
    (tg,) = elb.describe_target_groups(TargetGroupArns=[out["TargetGroupArn"]])["TargetGroups"]
    assert (tg["Protocol"], tg["Port"], tg["HealthCheckPort"]) == ("GENEVE", 6081, "80")
    (lb,) = elb.describe_load_balancers(LoadBalancerArns=[out["LoadBalancerArn"]])["LoadBalancers"]
    assert len(lb["AvailabilityZones"]) == 2  # moto ignores Type: gateway (template test)
    for z in "AB":
        (rtb,) = ec2.describe_route_tables(RouteTableIds=[params[f"ProtectedRouteTable{z}"]])[
            "RouteTables"
        ]
        default = [r for r in rtb["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0"]
        assert len(default) == 1, rtb["Routes"]
        assert out[f"Endpoint{z}"].startswith("vpce-")
