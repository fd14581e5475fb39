"""The two fleet templates: a new VPC around the fleet, or the fleet in subnets given."""

from __future__ import annotations

from typing import Any

from cfnspec.base import (
    RTB,
    SUBNET,
    THIRD,
    ZONES,
    att,
    equals,
    header,
    output,
    per_zone,
    ref,
    sub,
    tags,
    when,
)
from cfnspec.fleet import Net, fleet
from cfnspec.params import (
    fleet_conditions,
    fleet_parameters,
    fleet_rules,
    switch,
    third_zone_required,
    vpc_id_parameter,
    zone_ids,
)


def cidr_of(index: int) -> dict[str, Any]:
    return {"Fn::Select": [index, {"Fn::Cidr": [ref("VpcCidr"), 6, 8]}]}


def new_vpc_network() -> tuple[dict[str, Any], dict[str, Any]]:
    res: dict[str, Any] = {
        "Vpc": {
            "Type": "AWS::EC2::VPC",
            "Properties": {
                "CidrBlock": ref("VpcCidr"),
                "EnableDnsSupport": True,
                "EnableDnsHostnames": True,
                "Tags": tags(ref("Name")),
            },
        },
        "InternetGateway": {
            "Type": "AWS::EC2::InternetGateway",
            "Properties": {"Tags": tags(ref("Name"))},
        },
        "InternetGatewayAttachment": {
            "Type": "AWS::EC2::VPCGatewayAttachment",
            "Properties": {"VpcId": ref("Vpc"), "InternetGatewayId": ref("InternetGateway")},
        },
        "PublicRouteTable": {
            "Type": "AWS::EC2::RouteTable",
            "Properties": {"VpcId": ref("Vpc"), "Tags": tags(sub("${Name}-public"))},
        },
        "PublicDefaultRoute": {
            "Type": "AWS::EC2::Route",
            "DependsOn": "InternetGatewayAttachment",
            "Properties": {
                "RouteTableId": ref("PublicRouteTable"),
                "DestinationCidrBlock": "0.0.0.0/0",
                "GatewayId": ref("InternetGateway"),
            },
        },
    }
    for i, z in enumerate(ZONES):
        zone = ref(f"Zone{z}")
        low = z.lower()
        block = {
            f"PublicSubnet{z}": {
                "Type": "AWS::EC2::Subnet",
                "Properties": {
                    "VpcId": ref("Vpc"),
                    "AvailabilityZone": zone,
                    "CidrBlock": cidr_of(i),
                    "Tags": tags(sub(f"${{Name}}-public-{low}"), "public-subnet", zone),
                },
            },
            f"PrivateSubnet{z}": {
                "Type": "AWS::EC2::Subnet",
                "Properties": {
                    "VpcId": ref("Vpc"),
                    "AvailabilityZone": zone,
                    "CidrBlock": cidr_of(3 + i),
                    "Tags": tags(sub(f"${{Name}}-private-{low}"), "private-subnet", zone),
                },
            },
            f"PublicSubnetRoutes{z}": {
                "Type": "AWS::EC2::SubnetRouteTableAssociation",
                "Properties": {
                    "SubnetId": ref(f"PublicSubnet{z}"),
                    "RouteTableId": ref("PublicRouteTable"),
                },
            },
            f"PrivateRouteTable{z}": {
                "Type": "AWS::EC2::RouteTable",
                "Properties": {
                    "VpcId": ref("Vpc"),
                    "Tags": tags(sub(f"${{Name}}-private-{low}"), "private-route-table", zone),
                },
            },
            f"PrivateSubnetRoutes{z}": {
                "Type": "AWS::EC2::SubnetRouteTableAssociation",
                "Properties": {
                    "SubnetId": ref(f"PrivateSubnet{z}"),
                    "RouteTableId": ref(f"PrivateRouteTable{z}"),
                },
            },
        }
        res.update({k: when(i, v) for k, v in block.items()})
    res["EndpointSecurityGroup"] = {
        "Type": "AWS::EC2::SecurityGroup",
        "Condition": "CreateEndpoints",
        "Properties": {
            "GroupDescription": "Spectra interface VPC endpoints: HTTPS from the VPC",
            "VpcId": ref("Vpc"),
            "SecurityGroupIngress": [
                {
                    "IpProtocol": "tcp",
                    "FromPort": 443,
                    "ToPort": 443,
                    "CidrIp": ref("VpcCidr"),
                    "Description": "AWS APIs",
                }
            ],
            "Tags": tags(sub("${Name}-endpoints")),
        },
    }
    res["DynamoDbEndpoint"] = {
        "Type": "AWS::EC2::VPCEndpoint",
        "Condition": "CreateEndpoints",
        "Properties": {
            "VpcId": ref("Vpc"),
            "VpcEndpointType": "Gateway",
            "ServiceName": sub("com.amazonaws.${AWS::Region}.dynamodb"),
            "RouteTableIds": [ref("PublicRouteTable")],
        },
    }
    for service, key in (
        ("ssm", "Ssm"),
        ("sts", "Sts"),
        ("ec2", "Ec2"),
        ("autoscaling", "AutoScaling"),
    ):
        res[f"{key}Endpoint"] = {
            "Type": "AWS::EC2::VPCEndpoint",
            "Condition": "CreateEndpoints",
            "Properties": {
                "VpcId": ref("Vpc"),
                "VpcEndpointType": "Interface",
                "ServiceName": sub(f"com.amazonaws.${{AWS::Region}}.{service}"),
                "PrivateDnsEnabled": True,
                "SubnetIds": per_zone(lambda z: ref(f"PublicSubnet{z}")),
                "SecurityGroupIds": [att("EndpointSecurityGroup", "GroupId")],
            },
        }
    outputs = {
        "VpcId": output(ref("Vpc"), "the VPC"),
        "PublicSubnets": output(
            {"Fn::Join": [",", per_zone(lambda z: ref(f"PublicSubnet{z}"))]},
            "the appliances' subnets (outside ENIs), one per zone",
        ),
        "PrivateSubnets": output(
            {"Fn::Join": [",", per_zone(lambda z: ref(f"PrivateSubnet{z}"))]},
            "the workloads' subnets (inside ENIs), one per zone",
        ),
    }
    return res, outputs


def net_of(vpc: str, route_condition: dict[str, str | None]) -> Net:
    """The fleet's network: ``vpc`` (a resource or parameter), per zone the subnets and
    private route table of the same names (resources here, parameters there)."""
    return Net(
        ref(vpc),
        ref("VpcCidr"),
        {z: ref(f"PublicSubnet{z}") for z in ZONES},
        {z: ref(f"PrivateSubnet{z}") for z in ZONES},
        {z: ref(f"PrivateRouteTable{z}") for z in ZONES},
        route_condition,
    )


def new_vpc() -> dict[str, Any]:
    net = net_of("Vpc", {"A": None, "B": None, "C": THIRD})
    network, network_outputs = new_vpc_network()
    resources, outputs = fleet(net)
    params = fleet_parameters()
    params["VpcCidr"] = {
        "Type": "String",
        "Default": "10.0.0.0/16",
        "AllowedPattern": r"^(\d{1,3}\.){3}\d{1,3}/(1[6-9]|20)$",
        "ConstraintDescription": "VpcCidr: an IPv4 CIDR from /16 to /20 (six /24 subnets)",
    }
    params["VpcEndpoints"] = switch(
        "interface endpoints for SSM, STS, EC2, Auto Scaling and a DynamoDB "
        "gateway endpoint: the appliances' primary addresses have no public IP"
    )
    conditions = fleet_conditions()
    conditions["CreateEndpoints"] = equals(ref("VpcEndpoints"), "true")
    return {
        **header(
            "Cloud Spectra Gateway: a new VPC (public and private subnets in 2 or 3 "
            "Availability Zones) with the appliance fleet as each zone's NAT gateway"
        ),
        "Parameters": params,
        "Rules": fleet_rules(),
        "Conditions": conditions,
        "Resources": {**network, **resources},
        "Outputs": {**network_outputs, **outputs},
    }


def existing_vpc() -> dict[str, Any]:
    net = net_of("VpcId", {"A": "CreateRoutes", "B": "CreateRoutes", "C": "CreateRoutesC"})
    resources, outputs = fleet(net)
    params = fleet_parameters()
    params["VpcId"] = vpc_id_parameter()
    params["VpcCidr"] = {
        "Type": "String",
        "AllowedPattern": r"^(\d{1,3}\.){3}\d{1,3}/(1[6-9]|2[0-8])$",
        "ConstraintDescription": "VpcCidr: the VPC's IPv4 CIDR (/16 to /28)",
        "Description": "what the inside security group and GWLB rules admit",
    }
    params.update(zone_ids("PublicSubnet", SUBNET, "outside ENIs"))
    params.update(zone_ids("PrivateSubnet", SUBNET, "inside ENIs"))
    params.update(
        zone_ids(
            "PrivateRouteTable",
            RTB,
            "its 0.0.0.0/0 goes to the zone's gateway",
            " (each zone's private subnet needs its route table)",
        )
    )
    params["CreateDefaultRoutes"] = switch(
        "true: add 0.0.0.0/0 -> the gateway ENI to each private route table "
        "(fails if the table already has a default route); false: leave it to the first "
        "leader's takeover"
    )
    rules = fleet_rules()
    rules["ThirdZoneGiven"]["Assertions"] += third_zone_required(
        ["PublicSubnet", "PrivateSubnet", "PrivateRouteTable"]
    )
    conditions = fleet_conditions()
    conditions["CreateRoutes"] = equals(ref("CreateDefaultRoutes"), "true")
    conditions["CreateRoutesC"] = {"Fn::And": [{"Condition": THIRD}, {"Condition": "CreateRoutes"}]}
    return {
        **header(
            "Cloud Spectra Gateway: the appliance fleet in an existing VPC, as each zone's "
            "NAT gateway for the private route tables given"
        ),
        "Parameters": params,
        "Rules": rules,
        "Conditions": conditions,
        "Resources": resources,
        "Outputs": outputs,
    }
