"""control.aws.takeover against a moto server: the NAT address, the Elastic IP and the
private routes move to the new leader; a run is idempotent; the fence stops a stale
leader before it writes; a route table that is not ours is refused and left alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from control.aws.takeover import Enis, Takeover, Zone

pytestmark = pytest.mark.unit

NAT = "10.0.101.100"


@dataclass
class FakeAddresses:
    held: set[tuple[str, str, int]] = field(default_factory=set)

    def add(self, ifname: str, address: str, prefix_len: int) -> None:
        self.held.add((ifname, address, prefix_len))

    def remove(self, ifname: str, address: str, prefix_len: int) -> None:
        self.held.discard((ifname, address, prefix_len))


@dataclass(frozen=True)
class Vpc:
    ec2: Any
    zone: Zone
    gateways: tuple[Enis, Enis]
    igw: str


@pytest.fixture
def vpc(moto_endpoint: str) -> Vpc:
    ec2 = boto3.client(
        "ec2",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    vpc_id = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    public = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.0.101.0/24")["Subnet"]["SubnetId"]
    private = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    igw = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=vpc_id)
    gateways = []
    for n in (11, 12):
        outside = ec2.create_network_interface(SubnetId=public, PrivateIpAddress=f"10.0.101.{n}")
        inside = ec2.create_network_interface(SubnetId=private, PrivateIpAddress=f"10.0.1.{n}")
        gateways.append(
            Enis(
                outside["NetworkInterface"]["NetworkInterfaceId"],
                "eth0",
                inside["NetworkInterface"]["NetworkInterfaceId"],
                24,
            )
        )
    rtb = ec2.create_route_table(VpcId=vpc_id)["RouteTable"]["RouteTableId"]
    ec2.associate_route_table(RouteTableId=rtb, SubnetId=private)
    ec2.create_route(
        RouteTableId=rtb,
        DestinationCidrBlock="0.0.0.0/0",
        NetworkInterfaceId=gateways[0].inside_eni,
    )
    ec2.assign_private_ip_addresses(
        NetworkInterfaceId=gateways[0].outside_eni, PrivateIpAddresses=[NAT]
    )
    allocation = ec2.allocate_address(Domain="vpc")["AllocationId"]
    ec2.associate_address(
        AllocationId=allocation, NetworkInterfaceId=gateways[0].outside_eni, PrivateIpAddress=NAT
    )
    zone = Zone("us-east-1a", NAT, allocation, (rtb,))
    return Vpc(ec2, zone, (gateways[0], gateways[1]), igw)


def _takeover(vpc: Vpc, which: int, addresses: FakeAddresses) -> Takeover:
    return Takeover(vpc.zone, vpc.gateways[which], lambda: vpc.ec2, lambda: vpc.ec2, addresses)


def _default_target(vpc: Vpc) -> dict[str, Any]:
    table = vpc.ec2.describe_route_tables(RouteTableIds=list(vpc.zone.route_table_ids))
    routes = table["RouteTables"][0]["Routes"]
    return next(r for r in routes if r.get("DestinationCidrBlock") == "0.0.0.0/0")


def test_the_new_leader_gets_the_address_the_eip_and_the_routes(vpc: Vpc) -> None:
    addresses = FakeAddresses()
    standby = vpc.gateways[1]
    report = _takeover(vpc, 1, addresses).run(2, lambda: True)
    assert report.ok, report.error
    assert report.steps == {
        "nat_address": "assigned",
        # the Elastic IP follows a reassigned secondary IP (EC2 user guide, "Multiple
        # IP addresses": it "retains its association with the Elastic IP address")
        "elastic_ip": "already associated",
        "routes": f"replaced {vpc.zone.route_table_ids[0]}",
    }
    eni = vpc.ec2.describe_network_interfaces(NetworkInterfaceIds=[standby.outside_eni])
    assert NAT in {p["PrivateIpAddress"] for p in eni["NetworkInterfaces"][0]["PrivateIpAddresses"]}
    eip = vpc.ec2.describe_addresses(AllocationIds=[vpc.zone.allocation_id])["Addresses"][0]
    assert (eip["NetworkInterfaceId"], eip["PrivateIpAddress"]) == (standby.outside_eni, NAT)
    assert _default_target(vpc)["NetworkInterfaceId"] == standby.inside_eni
    assert addresses.held == {("eth0", NAT, 24)}

    again = _takeover(vpc, 1, addresses).run(2, lambda: True)
    assert again.ok and again.steps == {
        "nat_address": "already held",
        "elastic_ip": "already associated",
        "routes": "already ours",
    }


def test_a_fenced_leader_writes_nothing(vpc: Vpc) -> None:
    addresses = FakeAddresses()
    report = _takeover(vpc, 1, addresses).run(7, lambda: False)
    assert not report.ok and report.steps == {"nat_address": "fenced"}
    assert "no longer held" in (report.error or "")
    assert _default_target(vpc)["NetworkInterfaceId"] == vpc.gateways[0].inside_eni
    eip = vpc.ec2.describe_addresses(AllocationIds=[vpc.zone.allocation_id])["Addresses"][0]
    assert eip["NetworkInterfaceId"] == vpc.gateways[0].outside_eni
    assert addresses.held == set()


def test_the_fence_is_asked_again_before_the_routes(vpc: Vpc) -> None:
    answers = iter([True, True, False])
    report = _takeover(vpc, 1, FakeAddresses()).run(3, lambda: next(answers))
    assert report.steps["routes"] == "fenced"
    assert _default_target(vpc)["NetworkInterfaceId"] == vpc.gateways[0].inside_eni


def test_a_route_table_that_is_not_ours_is_refused_and_left_alone(vpc: Vpc) -> None:
    rtb = vpc.zone.route_table_ids[0]
    vpc.ec2.replace_route(RouteTableId=rtb, DestinationCidrBlock="0.0.0.0/0", GatewayId=vpc.igw)
    report = _takeover(vpc, 1, FakeAddresses()).run(2, lambda: True)
    assert not report.ok and report.steps["routes"] == "failed"
    assert rtb in (report.error or "") and vpc.igw in (report.error or "")
    assert _default_target(vpc).get("GatewayId") == vpc.igw


def test_release_removes_only_the_os_address(vpc: Vpc) -> None:
    addresses = FakeAddresses()
    takeover = _takeover(vpc, 1, addresses)
    assert takeover.run(2, lambda: True).ok
    takeover.release()
    assert addresses.held == set()
    eip = vpc.ec2.describe_addresses(AllocationIds=[vpc.zone.allocation_id])["Addresses"][0]
    assert eip["NetworkInterfaceId"] == vpc.gateways[1].outside_eni


def test_an_elastic_ip_that_points_elsewhere_is_associated(vpc: Vpc) -> None:
    association = vpc.ec2.describe_addresses(AllocationIds=[vpc.zone.allocation_id])["Addresses"][
        0
    ]["AssociationId"]
    vpc.ec2.disassociate_address(AssociationId=association)
    report = _takeover(vpc, 1, FakeAddresses()).run(2, lambda: True)
    assert report.ok and report.steps["elastic_ip"] == "associated"
    eip = vpc.ec2.describe_addresses(AllocationIds=[vpc.zone.allocation_id])["Addresses"][0]
    assert (eip["NetworkInterfaceId"], eip["PrivateIpAddress"]) == (
        vpc.gateways[1].outside_eni,
        NAT,
    )
