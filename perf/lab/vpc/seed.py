"""The lab's AWS resources in moto: created once on a fresh endpoint, read back by tag.

:func:`seed` builds, from :data:`~perf.lab.vpc.topology.TOPOLOGY`: the VPC and its
internet gateway; per AZ a private (workload) and a public (gateway) subnet, a public
route table (``0.0.0.0/0`` -> internet gateway) and a private one (``0.0.0.0/0`` -> the
first gateway's inside ENI); every instance with its ENIs at fixed addresses, tagged
with its lab name; per AZ the NAT address (a secondary private IP on the first
gateway's outside ENI) and its Elastic IP; per AZ an Auto Scaling group holding the
AZ's gateways (launching from the ``spectra-gateway`` launch template), with a launch
and a termination lifecycle hook; the DynamoDB leader-lease table. That is the state a
deployment leaves before any agent runs: source/destination checks are on, and moving
the NAT address or the route is the product's job. :func:`launch` runs one lab instance
(for the seed and for ``VpcLab.replace_instance``).

:func:`describe` reads it all back (ids included) for ``VpcLab.status()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import boto3
from botocore.config import Config

from control.aws.lease import KEY as LEASE_KEY
from control.aws.lease import create_table
from perf.lab.vpc.topology import (
    ENDPOINT_URL,
    LAUNCH_HOOK,
    LEASE_TABLE,
    NAME_TAG,
    REGION,
    SSM_PREFIX,
    TERMINATE_HOOK,
    TOPOLOGY,
    VPC_CIDR,
    VPC_NAME,
    Instance,
    Topology,
    router_ip,
)

INSTANCE_TYPE = "c6in.large"


def client(service: str, endpoint_url: str = ENDPOINT_URL, read_timeout: float = 10) -> Any:
    """A boto3 client for the lab's endpoint, with credentials moto accepts."""
    session: Any = boto3.session.Session()  # any service name, not the stubs' literals
    return session.client(
        service,
        region_name=REGION,
        endpoint_url=endpoint_url,
        aws_access_key_id="vpclab",
        aws_secret_access_key="vpclab",
        config=Config(connect_timeout=2, read_timeout=read_timeout, retries={"max_attempts": 2}),
    )


def clients(endpoint_url: str = ENDPOINT_URL) -> dict[str, Any]:
    """boto3 clients for the lab's endpoint, by service name."""
    return {s: client(s, endpoint_url) for s in ("ec2", "autoscaling", "dynamodb", "ssm")}


def _tags(kind: str, name: str) -> list[dict[str, Any]]:
    return [{"ResourceType": kind, "Tags": [{"Key": NAME_TAG, "Value": name}]}]


def _by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for item in items:
        for tag in item.get("Tags", []):
            if tag["Key"] == NAME_TAG:
                out[tag["Value"]] = item
    return out


def launch(
    ec2: Any,
    inst: Instance,
    subnets: Mapping[tuple[str, str], str],
    image_id: str,
    instance_type: str,
) -> dict[str, Any]:
    """Run the lab instance ``inst``: its ENIs at their fixed addresses (deleted with the
    instance), tagged with its lab name. ``subnets``: (AZ name, kind) -> subnet id."""
    nics = [
        {
            "DeviceIndex": nic.device,
            "SubnetId": subnets[inst.az, nic.subnet],
            "PrivateIpAddress": nic.ip,
            "DeleteOnTermination": True,
        }
        for nic in inst.nics
    ]
    made: dict[str, Any] = ec2.run_instances(
        ImageId=image_id,
        InstanceType=instance_type,
        MinCount=1,
        MaxCount=1,
        NetworkInterfaces=nics,
        TagSpecifications=_tags("instance", inst.name),
    )["Instances"][0]
    return made


def seed(c: Mapping[str, Any], topo: Topology = TOPOLOGY) -> None:
    """Create the lab's resources unless the lab's VPC already exists."""
    ec2 = c["ec2"]
    if ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": [VPC_NAME]}])["Vpcs"]:
        return
    vpc = ec2.create_vpc(CidrBlock=VPC_CIDR, TagSpecifications=_tags("vpc", VPC_NAME))
    vpc_id = vpc["Vpc"]["VpcId"]
    igw_id = ec2.create_internet_gateway(TagSpecifications=_tags("internet-gateway", VPC_NAME))[
        "InternetGateway"
    ]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw_id, VpcId=vpc_id)
    image_id = ec2.describe_images()["Images"][0]["ImageId"]

    subnets: dict[tuple[str, str], str] = {}
    for az in topo.azs:
        for kind, cidr in (("private", az.private_cidr), ("public", az.public_cidr)):
            subnets[az.name, kind] = ec2.create_subnet(
                VpcId=vpc_id,
                CidrBlock=cidr,
                AvailabilityZone=az.zone,
                TagSpecifications=_tags("subnet", f"{kind}-{az.name}"),
            )["Subnet"]["SubnetId"]

    enis: dict[tuple[str, int], str] = {}
    for inst in topo.instances:
        made = launch(ec2, inst, subnets, image_id, INSTANCE_TYPE)
        for nic in made["NetworkInterfaces"]:
            enis[inst.name, int(nic["Attachment"]["DeviceIndex"])] = nic["NetworkInterfaceId"]

    lt_id = ec2.create_launch_template(
        LaunchTemplateName="spectra-gateway",
        LaunchTemplateData={"ImageId": image_id, "InstanceType": INSTANCE_TYPE},
    )["LaunchTemplate"]["LaunchTemplateId"]
    for az in topo.azs:
        gateways = [g for g in topo.gateways if g.az == az.name]
        leader = gateways[0]
        public_rtb = ec2.create_route_table(
            VpcId=vpc_id, TagSpecifications=_tags("route-table", f"public-{az.name}")
        )["RouteTable"]["RouteTableId"]
        ec2.create_route(
            RouteTableId=public_rtb, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw_id
        )
        ec2.associate_route_table(RouteTableId=public_rtb, SubnetId=subnets[az.name, "public"])
        private_rtb = ec2.create_route_table(
            VpcId=vpc_id, TagSpecifications=_tags("route-table", f"private-{az.name}")
        )["RouteTable"]["RouteTableId"]
        ec2.create_route(
            RouteTableId=private_rtb,
            DestinationCidrBlock="0.0.0.0/0",
            NetworkInterfaceId=enis[leader.name, 1],
        )
        ec2.associate_route_table(RouteTableId=private_rtb, SubnetId=subnets[az.name, "private"])

        ec2.assign_private_ip_addresses(
            NetworkInterfaceId=enis[leader.name, 0], PrivateIpAddresses=[az.nat_ip]
        )
        alloc = ec2.allocate_address(
            Domain="vpc", Address=az.eip, TagSpecifications=_tags("elastic-ip", f"nat-{az.name}")
        )["AllocationId"]
        ec2.associate_address(
            AllocationId=alloc,
            NetworkInterfaceId=enis[leader.name, 0],
            PrivateIpAddress=az.nat_ip,
            AllowReassociation=True,
        )

        asg = c["autoscaling"]
        asg.create_auto_scaling_group(
            AutoScalingGroupName=az.asg,
            LaunchTemplate={"LaunchTemplateId": lt_id},
            MinSize=0,
            MaxSize=4,
            DesiredCapacity=0,
            VPCZoneIdentifier=subnets[az.name, "public"],
        )
        asg.attach_instances(
            AutoScalingGroupName=az.asg,
            InstanceIds=[_instance_id(ec2, g.name) for g in gateways],
        )
        for hook, transition in (
            (LAUNCH_HOOK, "autoscaling:EC2_INSTANCE_LAUNCHING"),
            (TERMINATE_HOOK, "autoscaling:EC2_INSTANCE_TERMINATING"),
        ):
            asg.put_lifecycle_hook(
                AutoScalingGroupName=az.asg,
                LifecycleHookName=hook,
                LifecycleTransition=transition,
                HeartbeatTimeout=300,
                DefaultResult="ABANDON",
            )

    create_table(c["dynamodb"], LEASE_TABLE)


def _instance_id(ec2: Any, name: str) -> str:
    res = ec2.describe_instances(
        Filters=[
            {"Name": "tag:Name", "Values": [name]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )
    return str(res["Reservations"][0]["Instances"][0]["InstanceId"])


def describe(c: Mapping[str, Any], endpoint_url: str, topo: Topology = TOPOLOGY) -> dict[str, Any]:
    """Every id and address of the lab's resources as moto holds them now."""
    ec2 = c["ec2"]
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "tag:Name", "Values": [VPC_NAME]}])["Vpcs"]
    if not vpcs:
        return {}
    vpc_id = vpcs[0]["VpcId"]
    only = [{"Name": "vpc-id", "Values": [vpc_id]}]
    subnets = _by_name(ec2.describe_subnets(Filters=only)["Subnets"])
    rtbs = _by_name(ec2.describe_route_tables(Filters=only)["RouteTables"])
    running = [{"Name": "instance-state-name", "Values": ["pending", "running"]}]
    instances = _by_name(
        [
            i
            for r in ec2.describe_instances(Filters=only + running)["Reservations"]
            for i in r["Instances"]
        ]
    )
    enis = ec2.describe_network_interfaces(Filters=only)["NetworkInterfaces"]
    eips = _by_name(ec2.describe_addresses()["Addresses"])
    igws = ec2.describe_internet_gateways(
        Filters=[{"Name": "attachment.vpc-id", "Values": [vpc_id]}]
    )["InternetGateways"]

    def nat_holder(ip: str) -> str | None:
        for eni in enis:
            if any(p["PrivateIpAddress"] == ip for p in eni["PrivateIpAddresses"]):
                return str(eni["NetworkInterfaceId"])
        return None

    azs = {}
    for az in topo.azs:
        eip = eips.get(f"nat-{az.name}", {})
        private_rtb = rtbs[f"private-{az.name}"]
        default: dict[str, Any] = next(
            (r for r in private_rtb["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0"), {}
        )
        azs[az.name] = {
            "zone": az.zone,
            "private_subnet_id": subnets[f"private-{az.name}"]["SubnetId"],
            "private_cidr": az.private_cidr,
            "private_router_ip": router_ip(az.private_cidr),
            "public_subnet_id": subnets[f"public-{az.name}"]["SubnetId"],
            "public_cidr": az.public_cidr,
            "public_router_ip": router_ip(az.public_cidr),
            "private_route_table_id": private_rtb["RouteTableId"],
            "public_route_table_id": rtbs[f"public-{az.name}"]["RouteTableId"],
            "private_default_route_eni": default.get("NetworkInterfaceId"),
            "nat_ip": az.nat_ip,
            "nat_ip_eni": nat_holder(az.nat_ip),
            "eip": az.eip,
            "eip_allocation_id": eip.get("AllocationId"),
            "eip_private_ip": eip.get("PrivateIpAddress"),
            "asg": az.asg,
            "gateways": [g.name for g in topo.gateways if g.az == az.name],
        }
    out_instances = {}
    for inst in topo.instances:
        raw = instances.get(inst.name)
        if raw is None:
            continue
        nics = {}
        for eni in enis:
            if (eni.get("Attachment") or {}).get("InstanceId") != raw["InstanceId"]:
                continue
            device = int(eni["Attachment"]["DeviceIndex"])
            nic = next(n for n in inst.nics if n.device == device)
            nics[f"eth{device}"] = {
                "eni_id": eni["NetworkInterfaceId"],
                "mac": eni["MacAddress"],
                "ip": eni["PrivateIpAddress"],
                "cidr": f"{eni['PrivateIpAddress']}/{topo.subnet_cidr(inst, nic).split('/')[1]}",
                "ips": [p["PrivateIpAddress"] for p in eni["PrivateIpAddresses"]],
                "subnet": nic.subnet,
                "subnet_id": eni["SubnetId"],
                "router_ip": router_ip(topo.subnet_cidr(inst, nic)),
                "router_link": inst.link(device),
                "source_dest_check": eni["SourceDestCheck"],
            }
        out_instances[inst.name] = {
            "instance_id": raw["InstanceId"],
            "instance_type": raw["InstanceType"],
            "az": inst.az,
            "zone": topo.az(inst.az).zone,
            "role": inst.role,
            "netns": inst.netns,
            "mgmt_ip": inst.mgmt_ip,
            "interfaces": {"outside": "eth0", "inside": "eth1"}
            if inst.role == "gateway"
            else {"eth": "eth0"},
            "enis": nics,
        }
    return {
        "endpoint_url": endpoint_url,
        "region": REGION,
        "vpc_id": vpc_id,
        "vpc_cidr": VPC_CIDR,
        "igw_id": igws[0]["InternetGatewayId"] if igws else None,
        "lease_table": {"name": LEASE_TABLE, "hash_key": LEASE_KEY},
        "ssm_prefix": SSM_PREFIX,
        "lifecycle_hooks": {"launch": LAUNCH_HOOK, "terminate": TERMINATE_HOOK},
        "azs": azs,
        "instances": out_instances,
    }
