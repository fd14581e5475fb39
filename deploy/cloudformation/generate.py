"""Writes the appliance fleet's CloudFormation templates from one description.

``new-vpc.yaml`` and ``existing-vpc.yaml`` share the fleet (per Availability Zone: the
gateway ENI holding the NAT address, its Elastic IP, a launch template and an Auto
Scaling group with lifecycle hooks; once: the instance role, the lease table, the
security groups); ``gwlb.yaml`` puts a Gateway Load Balancer in front of it.  Writing the
per-AZ blocks three times by hand in two templates would let them drift, so they are
generated here and ``tests/unit/deploy`` checks that the committed YAML is exactly this
module's output.  Run ``python deploy/cloudformation/generate.py`` after a change.

The templates use the long form of the intrinsic functions (``{"Ref": ...}``,
``{"Fn::Sub": ...}``): the YAML is plain data, readable by any YAML parser.  References:
the CloudFormation template anatomy (Parameters, Rules, Conditions, Outputs), the
resource reference of each type used, IMDSv2 ("Configure the instance metadata options",
EC2 user guide) and "Actions, resources, and condition keys" of EC2, Auto Scaling,
DynamoDB, SSM and STS for the instance role.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ZONES = ("A", "B", "C")
THIRD = "ThirdZone"
TAG = "spectra:deployment"
AZ_TAG = "spectra:az"
ROLE_TAG = "spectra:role"
LAUNCH_HOOK = "spectra-launch"  # control/config/aws.py Lifecycle defaults
TERMINATE_HOOK = "spectra-terminate"
LEASE_KEY = "lease_key"  # control/aws/lease.py KEY
GENEVE_PORT = 6081
CIDR = r"(\d{1,3}\.){3}\d{1,3}/(1[6-9]|2[0-8])"
MGMT_CIDR = r"(\d{1,3}\.){3}\d{1,3}/([1-9]|[12][0-9]|3[0-2])"
ZONE = r"[a-z]{2}(-[a-z]+)+-\d{1,2}[a-z]"
RTB = r"rtb-[0-9a-f]{8,17}"
SUBNET = r"subnet-[0-9a-f]{8,17}"

UNSCOPED = {
    "ec2:DescribeNetworkInterfaces": "EC2 Describe* actions support no resource-level permissions",
    "ec2:DescribeAddresses": "EC2 Describe* actions support no resource-level permissions",
    "autoscaling:DescribeAutoScalingInstances": "Auto Scaling Describe* actions support "
    "no resource-level permissions",
}
"""The instance role's actions granted on ``Resource: "*"``, each with the reason."""

EXTRA_ACTIONS = {
    "ssm:PutParameter": "the first boot writes the admin token once (SecureString), "
    "scoped to that one parameter",
}
"""Instance-role actions beyond ``control.aws.session.INSTANCE_OPERATIONS``, with why."""


# -- intrinsic functions ---------------------------------------------------------------


def ref(name: str) -> dict[str, Any]:
    return {"Ref": name}


def sub(text: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"Fn::Sub": text if variables is None else [text, variables]}


def att(resource: str, attribute: str) -> dict[str, Any]:
    return {"Fn::GetAtt": [resource, attribute]}


def iff(condition: str, yes: Any, no: Any) -> dict[str, Any]:
    return {"Fn::If": [condition, yes, no]}


def equals(a: Any, b: Any) -> dict[str, Any]:
    return {"Fn::Equals": [a, b]}


def nonempty(param: str) -> dict[str, Any]:
    return {"Fn::Not": [equals(ref(param), "")]}


NO_VALUE = ref("AWS::NoValue")


def arn(service: str, resource: str, *, region: bool = True) -> dict[str, Any]:
    where = "${AWS::Region}:${AWS::AccountId}" if region else "${AWS::AccountId}"
    return sub(f"arn:${{AWS::Partition}}:{service}:{where}:{resource}")


def tags(name: Any, role: str | None = None, zone: Any = None) -> list[dict[str, Any]]:
    out = [{"Key": "Name", "Value": name}, {"Key": TAG, "Value": ref("Name")}]
    if zone is not None:
        out.append({"Key": AZ_TAG, "Value": zone})
    if role is not None:
        out.append({"Key": ROLE_TAG, "Value": role})
    return out


def when(index: int, resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` only when its zone exists (the third needs ``ZoneCount`` 3)."""
    return {"Condition": THIRD, **resource} if index == 2 else resource


def output(value: Any, description: str, export: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"Description": description, "Value": value}
    if export:
        out["Export"] = {"Name": sub(f"${{AWS::StackName}}-{export}")}
    return out


# -- parameters and rules shared by the fleet templates --------------------------------


def fleet_parameters() -> dict[str, Any]:
    return {
        "Name": {
            "Type": "String",
            "Default": "spectra",
            "AllowedPattern": "^[a-z0-9][a-z0-9-]{0,30}$",
            "ConstraintDescription": "Name: 1-31 lower-case letters, digits and -",
            "Description": "deployment name: prefixes every resource; the operational "
            "role is <Name>-cross-account-role1",
        },
        "ZoneCount": {
            "Type": "String",
            "AllowedValues": ["2", "3"],
            "Default": "2",
            "ConstraintDescription": "ZoneCount: 2 or 3 Availability Zones (high "
            "availability needs at least two)",
            "Description": "how many Availability Zones the fleet spans",
        },
        **{
            f"Zone{z}": {
                "Type": "String",
                "AllowedPattern": f"^({ZONE})$" if i < 2 else f"^({ZONE})?$",
                **({"Default": ""} if i == 2 else {}),
                "ConstraintDescription": f"Zone{z}: an Availability Zone name like "
                "eu-west-1a" + (" (empty when ZoneCount is 2)" if i == 2 else ""),
                "Description": f"Availability Zone {i + 1}"
                + (" (only with ZoneCount 3)" if i == 2 else ""),
            }
            for i, z in enumerate(ZONES)
        },
        "ImageId": {
            "Type": "AWS::EC2::Image::Id",
            "Description": "the appliance AMI",
        },
        "InstanceType": {
            "Type": "String",
            "Default": "c6in.large",
            "AllowedPattern": r"^[a-z][a-z0-9-]*\.[a-z0-9]+$",
            "ConstraintDescription": "InstanceType: an EC2 instance type like c6in.large",
        },
        "MinInstancesPerZone": {
            "Type": "Number",
            "Default": 2,
            "MinValue": 1,
            "MaxValue": 10,
            "Description": "Auto Scaling minimum per zone: 2 for a standby (takeover keeps "
            "flows), 1 for none (the group replaces a failed leader)",
        },
        "MaxInstancesPerZone": {
            "Type": "Number",
            "Default": 3,
            "MinValue": 1,
            "MaxValue": 10,
            "Description": "Auto Scaling maximum per zone (room for a rolling replacement)",
        },
        "VolumeSize": {"Type": "Number", "Default": 16, "MinValue": 8, "MaxValue": 1024},
        "Spot": {
            "Type": "String",
            "AllowedValues": ["none", "standbys"],
            "Default": "none",
            "Description": "standbys: one On-Demand instance per zone, the rest Spot",
        },
        "ManagementCidr": {
            "Type": "String",
            "AllowedPattern": f"^{MGMT_CIDR}$",
            "ConstraintDescription": "ManagementCidr: an IPv4 CIDR with a prefix of /1 to "
            "/32; 0.0.0.0/0 is refused (management must not be open to the internet)",
            "Description": "who may reach SSH and the API/dashboard",
        },
        "ManagementCidr2": {
            "Type": "String",
            "Default": "",
            "AllowedPattern": f"^({MGMT_CIDR})?$",
            "ConstraintDescription": "ManagementCidr2: empty or an IPv4 CIDR with a prefix "
            "of /1 to /32; 0.0.0.0/0 is refused",
        },
        "ApiPort": {"Type": "Number", "Default": 8080, "MinValue": 1, "MaxValue": 65535},
        "HealthCheckPort": {
            "Type": "Number",
            "Default": 80,
            "MinValue": 1,
            "MaxValue": 65535,
            "Description": "the appliance's GWLB health port (gwlb.health_check.port)",
        },
        "SsmPrefix": {
            "Type": "String",
            "Default": "/spectra/config",
            "AllowedPattern": "^(/[A-Za-z0-9_.-]+)+$",
            "ConstraintDescription": "SsmPrefix: an SSM path like /spectra/config",
            "Description": "the config store (ssm:<SsmPrefix>); the admin token is "
            "<SsmPrefix>/admin-token",
        },
        "ExternalId": {
            "Type": "String",
            "Default": "",
            "NoEcho": True,
            "AllowedPattern": r"^([\w+=,.@:/-]{2,1224})?$",
            "ConstraintDescription": "ExternalId: empty or 2-1224 letters, digits and +=,.@:/_-",
            "Description": "external ID of the operational role (empty: no operational "
            "role in the user data)",
        },
        "OperationalRoleAccount": {
            "Type": "String",
            "Default": "",
            "AllowedPattern": r"^(\d{12})?$",
            "ConstraintDescription": "OperationalRoleAccount: empty or a 12-digit account",
            "Description": "account of the operational role (empty: this account)",
        },
        "GwlbTargetGroupArn": {
            "Type": "String",
            "Default": "",
            "AllowedPattern": r"^(arn:aws[a-z-]*:elasticloadbalancing:\S+)?$",
            "ConstraintDescription": "GwlbTargetGroupArn: empty or a target group ARN",
            "Description": "the TargetGroupArn output of gwlb.yaml (empty: no GWLB)",
        },
    }


def fleet_rules() -> dict[str, Any]:
    return {
        "DistinctZones": {
            "Assertions": [
                {
                    "Assert": {"Fn::Not": [equals(ref("ZoneA"), ref("ZoneB"))]},
                    "AssertDescription": "ZoneA and ZoneB must differ: high availability "
                    "needs two Availability Zones",
                }
            ]
        },
        "ThirdZoneGiven": {
            "RuleCondition": equals(ref("ZoneCount"), "3"),
            "Assertions": [
                {
                    "Assert": nonempty("ZoneC"),
                    "AssertDescription": "ZoneC is required when ZoneCount is 3",
                },
                {
                    "Assert": {
                        "Fn::And": [
                            {"Fn::Not": [equals(ref("ZoneC"), ref("ZoneA"))]},
                            {"Fn::Not": [equals(ref("ZoneC"), ref("ZoneB"))]},
                        ]
                    },
                    "AssertDescription": "ZoneC must differ from ZoneA and ZoneB",
                },
            ],
        },
        "NoThirdZone": {
            "RuleCondition": equals(ref("ZoneCount"), "2"),
            "Assertions": [
                {
                    "Assert": equals(ref("ZoneC"), ""),
                    "AssertDescription": "ZoneC must be empty when ZoneCount is 2",
                }
            ],
        },
    }


def fleet_conditions() -> dict[str, Any]:
    return {
        THIRD: equals(ref("ZoneCount"), "3"),
        "HasSecondManagementCidr": nonempty("ManagementCidr2"),
        "HasOperationalRole": nonempty("ExternalId"),
        "HasRoleAccount": nonempty("OperationalRoleAccount"),
        "UseSpot": equals(ref("Spot"), "standbys"),
        "HasGwlb": nonempty("GwlbTargetGroupArn"),
    }


# -- the fleet --------------------------------------------------------------------------


class Net:
    """Where the fleet goes: the network template's ids, as template expressions."""

    def __init__(
        self,
        vpc: Any,
        vpc_cidr: Any,
        public_subnet: dict[str, Any],
        private_subnet: dict[str, Any],
        private_route_table: dict[str, Any],
        route_condition: dict[str, str | None],
    ) -> None:
        self.vpc = vpc
        self.vpc_cidr = vpc_cidr
        self.public_subnet = public_subnet
        self.private_subnet = private_subnet
        self.private_route_table = private_route_table
        self.route_condition = route_condition  # per zone: the default route's condition


def nat_address(z: str) -> dict[str, Any]:
    return {"Fn::Select": [0, att(f"GatewayEni{z}", "SecondaryPrivateIpAddresses")]}


def instance_role() -> dict[str, Any]:
    """The instance profile's role: exactly ``control.aws.session.INSTANCE_OPERATIONS``
    (plus :data:`EXTRA_ACTIONS`), each scoped to this deployment's resources."""
    own_tag = {"StringEquals": {f"aws:ResourceTag/{TAG}": ref("Name")}}
    statements = [
        {
            "Sid": "ReadConfigStore",
            "Effect": "Allow",
            "Action": ["ssm:GetParameter", "ssm:GetParameters", "ssm:GetParametersByPath"],
            "Resource": [
                arn("ssm", "parameter${SsmPrefix}"),
                arn("ssm", "parameter${SsmPrefix}/*"),
            ],
        },
        {
            "Sid": "WriteAdminTokenOnce",
            "Effect": "Allow",
            "Action": ["ssm:PutParameter"],
            "Resource": [arn("ssm", "parameter${SsmPrefix}/admin-token")],
        },
        {
            "Sid": "LeaderLease",
            "Effect": "Allow",
            "Action": [
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:DescribeTable",
            ],
            "Resource": [att("LeaseTable", "Arn")],
        },
        {
            "Sid": "OwnInterfacesByTag",
            "Effect": "Allow",
            "Action": [
                "ec2:AssignPrivateIpAddresses",
                "ec2:UnassignPrivateIpAddresses",
                "ec2:ModifyNetworkInterfaceAttribute",
            ],
            "Resource": [arn("ec2", "network-interface/*")],
            "Condition": own_tag,
        },
        {
            "Sid": "ZoneElasticIpByTag",
            "Effect": "Allow",
            "Action": ["ec2:AssociateAddress"],
            "Resource": [arn("ec2", "elastic-ip/*"), arn("ec2", "network-interface/*")],
            "Condition": own_tag,
        },
        {
            "Sid": "OwnLifecycleHooks",
            "Effect": "Allow",
            "Action": [
                "autoscaling:CompleteLifecycleAction",
                "autoscaling:RecordLifecycleActionHeartbeat",
            ],
            "Resource": [
                arn("autoscaling", "autoScalingGroup:*:autoScalingGroupName/${Name}-gw-*")
            ],
        },
        {
            "Sid": "AssumeOperationalRole",
            "Effect": "Allow",
            "Action": ["sts:AssumeRole"],
            "Resource": [
                sub(
                    "arn:${AWS::Partition}:iam::${Account}:role/${Name}-cross-account-role*",
                    {
                        "Account": iff(
                            "HasRoleAccount", ref("OperationalRoleAccount"), ref("AWS::AccountId")
                        )
                    },
                )
            ],
        },
        {
            "Sid": "DescribeUnscopable",
            "Effect": "Allow",
            "Action": sorted(UNSCOPED),
            "Resource": "*",
        },
    ]
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "RoleName": sub("${Name}-instance-${AWS::Region}"),
            "Description": "Spectra appliance instance role: the instance's own business only",
            "AssumeRolePolicyDocument": {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "ec2.amazonaws.com"},
                        "Action": "sts:AssumeRole",
                    }
                ],
            },
            "Policies": [
                {
                    "PolicyName": "spectra-instance",
                    "PolicyDocument": {"Version": "2012-10-17", "Statement": statements},
                }
            ],
            "Tags": [{"Key": TAG, "Value": ref("Name")}],
        },
    }


def user_data(zone: Any) -> dict[str, Any]:
    """The user-data JSON contract (docs/user-data.md), one object per zone."""
    role = sub(
        ',"operational_role":{"name":"${Name}-cross-account-role1",'
        '"external_id":"${ExternalId}","account":"${Account}"}',
        {"Account": iff("HasRoleAccount", ref("OperationalRoleAccount"), ref("AWS::AccountId"))},
    )
    text = (
        '{"name":"${Name}","store":"ssm:${SsmPrefix}","az":"${Zone}",'
        '"lease_table":"${LeaseTable}","admin_token_parameter":"${SsmPrefix}/admin-token",'
        '"mode":"fleet"${Role}}'
    )
    return {"Fn::Base64": sub(text, {"Zone": zone, "Role": iff("HasOperationalRole", role, "")})}


def security_groups(net: Net) -> dict[str, Any]:
    def rule(proto: str, port: Any, cidr: Any, what: str) -> dict[str, Any]:
        return {
            "IpProtocol": proto,
            "FromPort": port,
            "ToPort": port,
            "CidrIp": cidr,
            "Description": what,
        }

    out: dict[str, Any] = {
        "OutsideSecurityGroup": {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "Spectra outside ENIs: management from ManagementCidr, "
                "GENEVE and health checks from the VPC",
                "VpcId": net.vpc,
                "SecurityGroupIngress": [
                    rule("tcp", 22, ref("ManagementCidr"), "SSH"),
                    rule("tcp", ref("ApiPort"), ref("ManagementCidr"), "API and dashboard"),
                    rule("udp", GENEVE_PORT, net.vpc_cidr, "GWLB GENEVE"),
                    rule("tcp", ref("HealthCheckPort"), net.vpc_cidr, "GWLB health check"),
                ],
                "Tags": tags(sub("${Name}-outside")),
            },
        },
        "InsideSecurityGroup": {
            "Type": "AWS::EC2::SecurityGroup",
            "Properties": {
                "GroupDescription": "Spectra inside ENIs: VPC traffic to NAT and inspect, "
                "conntrack sync between the instances of a zone",
                "VpcId": net.vpc,
                "SecurityGroupIngress": [
                    {
                        "IpProtocol": "-1",
                        "CidrIp": net.vpc_cidr,
                        "Description": "VPC traffic",
                    }
                ],
                "Tags": tags(sub("${Name}-inside")),
            },
        },
    }
    for port, what in ((22, "SSH"), (ref("ApiPort"), "API and dashboard")):
        key = "ManagementSsh2" if port == 22 else "ManagementApi2"
        out[key] = {
            "Type": "AWS::EC2::SecurityGroupIngress",
            "Condition": "HasSecondManagementCidr",
            "Properties": {
                "GroupId": att("OutsideSecurityGroup", "GroupId"),
                **rule("tcp", port, ref("ManagementCidr2"), what),
            },
        }
    return out


def lease_table() -> dict[str, Any]:
    return {
        "Type": "AWS::DynamoDB::Table",
        "Properties": {
            "TableName": sub("${Name}-leader-lease"),
            "BillingMode": "PAY_PER_REQUEST",
            "AttributeDefinitions": [{"AttributeName": LEASE_KEY, "AttributeType": "S"}],
            "KeySchema": [{"AttributeName": LEASE_KEY, "KeyType": "HASH"}],
            "SSESpecification": {"SSEEnabled": True},
            "Tags": [{"Key": TAG, "Value": ref("Name")}],
        },
    }


def zone_resources(i: int, z: str, net: Net) -> dict[str, Any]:
    zone = ref(f"Zone{z}")
    group = sub(f"${{Name}}-gw-{z.lower()}")
    lt_spec = {
        "LaunchTemplateId": ref(f"LaunchTemplate{z}"),
        "Version": att(f"LaunchTemplate{z}", "LatestVersionNumber"),
    }
    res: dict[str, Any] = {
        f"GatewayEni{z}": {
            "Type": "AWS::EC2::NetworkInterface",
            "Properties": {
                "Description": sub(
                    "${Name} ${Zone} NAT address: moves to the zone's leader",
                    {"Zone": zone},
                ),
                "SubnetId": net.public_subnet[z],
                "GroupSet": [att("OutsideSecurityGroup", "GroupId")],
                "SecondaryPrivateIpAddressCount": 1,
                "SourceDestCheck": False,
                "Tags": tags(sub(f"${{Name}}-nat-{z.lower()}"), "nat", zone),
            },
        },
        f"ElasticIp{z}": {
            "Type": "AWS::EC2::EIP",
            "Properties": {
                "Domain": "vpc",
                "Tags": tags(sub(f"${{Name}}-nat-{z.lower()}"), "elastic-ip", zone),
            },
        },
        f"ElasticIpAssociation{z}": {
            "Type": "AWS::EC2::EIPAssociation",
            "Properties": {
                "AllocationId": att(f"ElasticIp{z}", "AllocationId"),
                "NetworkInterfaceId": ref(f"GatewayEni{z}"),
                "PrivateIpAddress": nat_address(z),
            },
        },
        f"LaunchTemplate{z}": {
            "Type": "AWS::EC2::LaunchTemplate",
            "Properties": {
                "LaunchTemplateName": group,
                "LaunchTemplateData": {
                    "ImageId": ref("ImageId"),
                    "InstanceType": ref("InstanceType"),
                    "IamInstanceProfile": {"Arn": att("InstanceProfile", "Arn")},
                    "MetadataOptions": {
                        "HttpEndpoint": "enabled",
                        "HttpTokens": "required",
                        "HttpPutResponseHopLimit": 1,
                    },
                    "BlockDeviceMappings": [
                        {
                            "DeviceName": "/dev/xvda",
                            "Ebs": {
                                "Encrypted": True,
                                "VolumeType": "gp3",
                                "VolumeSize": ref("VolumeSize"),
                                "DeleteOnTermination": True,
                            },
                        }
                    ],
                    "NetworkInterfaces": [
                        {
                            "DeviceIndex": 0,
                            "Description": "outside",
                            "Groups": [att("OutsideSecurityGroup", "GroupId")],
                            "DeleteOnTermination": True,
                        },
                        {
                            "DeviceIndex": 1,
                            "Description": "inside",
                            "SubnetId": net.private_subnet[z],
                            "Groups": [att("InsideSecurityGroup", "GroupId")],
                            "DeleteOnTermination": True,
                        },
                    ],
                    "TagSpecifications": [
                        {"ResourceType": kind, "Tags": tags(group, "gateway", zone)}
                        for kind in ("network-interface", "volume")
                    ],
                    "UserData": user_data(zone),
                },
            },
        },
        f"Group{z}": {
            "Type": "AWS::AutoScaling::AutoScalingGroup",
            "Properties": {
                "AutoScalingGroupName": group,
                "MinSize": ref("MinInstancesPerZone"),
                "MaxSize": ref("MaxInstancesPerZone"),
                "VPCZoneIdentifier": [net.public_subnet[z]],
                "LaunchTemplate": iff("UseSpot", NO_VALUE, lt_spec),
                "MixedInstancesPolicy": iff(
                    "UseSpot",
                    {
                        "InstancesDistribution": {
                            "OnDemandBaseCapacity": 1,
                            "OnDemandPercentageAboveBaseCapacity": 0,
                            "SpotAllocationStrategy": "price-capacity-optimized",
                        },
                        "LaunchTemplate": {"LaunchTemplateSpecification": lt_spec},
                    },
                    NO_VALUE,
                ),
                "TargetGroupARNs": iff("HasGwlb", [ref("GwlbTargetGroupArn")], NO_VALUE),
                "HealthCheckType": "EC2",
                "HealthCheckGracePeriod": 300,
                "LifecycleHookSpecificationList": [
                    {
                        "LifecycleHookName": LAUNCH_HOOK,
                        "LifecycleTransition": "autoscaling:EC2_INSTANCE_LAUNCHING",
                        "HeartbeatTimeout": 600,
                        "DefaultResult": "ABANDON",
                    },
                    {
                        "LifecycleHookName": TERMINATE_HOOK,
                        "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
                        "HeartbeatTimeout": 300,
                        "DefaultResult": "CONTINUE",
                    },
                ],
                "Tags": [
                    {"Key": "Name", "Value": group, "PropagateAtLaunch": True},
                    {"Key": TAG, "Value": ref("Name"), "PropagateAtLaunch": True},
                    {"Key": AZ_TAG, "Value": zone, "PropagateAtLaunch": True},
                ],
            },
        },
    }
    route = {
        "Type": "AWS::EC2::Route",
        "Properties": {
            "RouteTableId": net.private_route_table[z],
            "DestinationCidrBlock": "0.0.0.0/0",
            "NetworkInterfaceId": ref(f"GatewayEni{z}"),
        },
    }
    condition = net.route_condition[z]
    res[f"DefaultRoute{z}"] = {"Condition": condition, **route} if condition else route
    return {k: when(i, v) if k != f"DefaultRoute{z}" else v for k, v in res.items()}


def zone_outputs(i: int, z: str, net: Net) -> dict[str, Any]:
    out = {
        f"GatewayEni{z}": output(
            ref(f"GatewayEni{z}"),
            f"zone {z}: the gateway ENI that holds the NAT address until the first leader "
            "takes it (the private route table points here until then)",
        ),
        f"NatAddress{z}": output(nat_address(z), f"zone {z}: aws.zones.<az>.nat_address"),
        f"ElasticIp{z}": output(ref(f"ElasticIp{z}"), f"zone {z}: the public NAT address"),
        f"ElasticIpAllocation{z}": output(
            att(f"ElasticIp{z}", "AllocationId"),
            f"zone {z}: aws.zones.<az>.elastic_ip_allocation_id",
        ),
        f"PrivateRouteTable{z}": output(
            net.private_route_table[z], f"zone {z}: aws.zones.<az>.route_tables"
        ),
        f"AutoScalingGroup{z}": output(ref(f"Group{z}"), f"zone {z}: the Auto Scaling group"),
        f"DashboardUrl{z}": output(
            sub(f"http://${{ElasticIp{z}}}:${{ApiPort}}/"),
            f"zone {z}: the dashboard of the zone's leader (from ManagementCidr)",
        ),
    }
    return {k: when(i, v) for k, v in out.items()}


def zones_json(net: Net) -> dict[str, Any]:
    def entry(z: str) -> dict[str, Any]:
        return sub(
            '"${Zone}":{"nat_address":"${Nat}","elastic_ip_allocation_id":"${Alloc}",'
            '"route_tables":["${Rtb}"]}',
            {
                "Zone": ref(f"Zone{z}"),
                "Nat": nat_address(z),
                "Alloc": att(f"ElasticIp{z}", "AllocationId"),
                "Rtb": net.private_route_table[z],
            },
        )

    third = iff(THIRD, {"Fn::Join": ["", [",", entry("C")]]}, "")
    return {"Fn::Join": ["", ["{", entry("A"), ",", entry("B"), third, "}"]]}


def fleet(net: Net) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fleet's resources and outputs on ``net``."""
    resources: dict[str, Any] = {
        "InstanceRole": instance_role(),
        "InstanceProfile": {
            "Type": "AWS::IAM::InstanceProfile",
            "Properties": {"Roles": [ref("InstanceRole")]},
        },
        "LeaseTable": lease_table(),
        **security_groups(net),
    }
    outputs: dict[str, Any] = {
        "InstanceRoleArn": output(
            att("InstanceRole", "Arn"),
            "the instance role: the operational-roles stack trusts it",
            "InstanceRoleArn",
        ),
        "InstanceRoleName": output(ref("InstanceRole"), "the instance role's name"),
        "LeaseTableName": output(ref("LeaseTable"), "aws.lease.table", "LeaseTableName"),
        "ConfigStore": output(sub("ssm:${SsmPrefix}"), "the config store of the fleet"),
        "AdminTokenParameter": output(
            sub("${SsmPrefix}/admin-token"),
            "SSM SecureString the first boot writes the admin token to",
        ),
        "AwsZones": output(zones_json(net), "the document's aws.zones, as JSON"),
    }
    for i, z in enumerate(ZONES):
        resources.update(zone_resources(i, z, net))
        outputs.update(zone_outputs(i, z, net))
    return resources, outputs


# -- the templates ----------------------------------------------------------------------


def cidr_of(index: int) -> dict[str, Any]:
    return {"Fn::Select": [index, {"Fn::Cidr": [ref("VpcCidr"), 6, 8]}]}


def per_zone(make: Any) -> Any:
    """A list over the zones: two, or three with ``ThirdZone``."""
    return iff(THIRD, [make(z) for z in ZONES], [make(z) for z in ZONES[:2]])


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


def header(description: str) -> dict[str, Any]:
    return {"AWSTemplateFormatVersion": "2010-09-09", "Description": description}


def new_vpc() -> dict[str, Any]:
    net = Net(
        ref("Vpc"),
        ref("VpcCidr"),
        {z: ref(f"PublicSubnet{z}") for z in ZONES},
        {z: ref(f"PrivateSubnet{z}") for z in ZONES},
        {z: ref(f"PrivateRouteTable{z}") for z in ZONES},
        {"A": None, "B": None, "C": THIRD},
    )
    network, network_outputs = new_vpc_network()
    resources, outputs = fleet(net)
    params = fleet_parameters()
    params["VpcCidr"] = {
        "Type": "String",
        "Default": "10.0.0.0/16",
        "AllowedPattern": r"^(\d{1,3}\.){3}\d{1,3}/(1[6-9]|20)$",
        "ConstraintDescription": "VpcCidr: an IPv4 CIDR from /16 to /20 (six /24 subnets)",
    }
    params["VpcEndpoints"] = {
        "Type": "String",
        "AllowedValues": ["true", "false"],
        "Default": "true",
        "Description": "interface endpoints for SSM, STS, EC2, Auto Scaling and a DynamoDB "
        "gateway endpoint: the appliances' primary addresses have no public IP",
    }
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
    net = Net(
        ref("VpcId"),
        ref("VpcCidr"),
        {z: ref(f"PublicSubnet{z}") for z in ZONES},
        {z: ref(f"PrivateSubnet{z}") for z in ZONES},
        {z: ref(f"PrivateRouteTable{z}") for z in ZONES},
        {"A": "CreateRoutes", "B": "CreateRoutes", "C": "CreateRoutesC"},
    )
    resources, outputs = fleet(net)
    params = fleet_parameters()
    params["VpcId"] = {
        "Type": "String",
        "AllowedPattern": r"^vpc-[0-9a-f]{8,17}$",
        "ConstraintDescription": "VpcId: a VPC ID like vpc-0123abcd",
    }
    params["VpcCidr"] = {
        "Type": "String",
        "AllowedPattern": r"^(\d{1,3}\.){3}\d{1,3}/(1[6-9]|2[0-8])$",
        "ConstraintDescription": "VpcCidr: the VPC's IPv4 CIDR (/16 to /28)",
        "Description": "what the inside security group and GWLB rules admit",
    }
    kinds = (
        ("PublicSubnet", SUBNET, "a subnet ID like subnet-0123abcd", "outside ENIs"),
        ("PrivateSubnet", SUBNET, "a subnet ID like subnet-0123abcd", "inside ENIs"),
        (
            "PrivateRouteTable",
            RTB,
            "a route table ID like rtb-0123abcd (each zone's private subnet needs its route table)",
            "its 0.0.0.0/0 goes to the zone's gateway",
        ),
    )
    for kind, pattern, accepted, what in kinds:
        for i, z in enumerate(ZONES):
            third = i == 2
            params[f"{kind}{z}"] = {
                "Type": "String",
                "AllowedPattern": f"^({pattern})?$" if third else f"^{pattern}$",
                **({"Default": ""} if third else {}),
                "ConstraintDescription": f"{kind}{z}: {accepted}"
                + (" (empty when ZoneCount is 2)" if third else ""),
                "Description": f"zone {z}: {what}",
            }
    params["CreateDefaultRoutes"] = {
        "Type": "String",
        "AllowedValues": ["true", "false"],
        "Default": "true",
        "Description": "true: add 0.0.0.0/0 -> the gateway ENI to each private route table "
        "(fails if the table already has a default route); false: leave it to the first "
        "leader's takeover",
    }
    rules = fleet_rules()
    rules["ThirdZoneGiven"]["Assertions"] += [
        {
            "Assert": nonempty(f"{kind}C"),
            "AssertDescription": f"{kind}C is required when ZoneCount is 3",
        }
        for kind, *_ in kinds
    ]
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


def gwlb() -> dict[str, Any]:
    params: dict[str, Any] = {
        "Name": fleet_parameters()["Name"],
        "ZoneCount": fleet_parameters()["ZoneCount"],
        "VpcId": {
            "Type": "String",
            "AllowedPattern": r"^vpc-[0-9a-f]{8,17}$",
            "ConstraintDescription": "VpcId: a VPC ID like vpc-0123abcd",
        },
        "HealthCheckPort": fleet_parameters()["HealthCheckPort"],
        "HealthCheckProtocol": {
            "Type": "String",
            "AllowedValues": ["TCP", "HTTP"],
            "Default": "TCP",
            "Description": "gwlb.health_check.protocol of the appliances' document",
        },
        "HealthCheckPath": {
            "Type": "String",
            "Default": "/healthz",
            "AllowedPattern": r"^/\S*$",
            "ConstraintDescription": "HealthCheckPath: a path starting with /",
        },
        "CreateRoutes": {
            "Type": "String",
            "AllowedValues": ["true", "false"],
            "Default": "true",
            "Description": "true: 0.0.0.0/0 of each protected route table -> its zone's "
            "GWLB endpoint (fails if the table already has a default route)",
        },
    }
    kinds = (
        ("ApplianceSubnet", SUBNET, "the GWLB's subnet in the zone (the appliances' subnet)"),
        ("EndpointSubnet", SUBNET, "the GWLB endpoint's subnet in the zone"),
        ("ProtectedRouteTable", RTB, "the route table whose traffic the endpoint inspects"),
    )
    for kind, pattern, what in kinds:
        for i, z in enumerate(ZONES):
            third = i == 2
            params[f"{kind}{z}"] = {
                "Type": "String",
                "AllowedPattern": f"^({pattern})?$" if third else f"^{pattern}$",
                **({"Default": ""} if third else {}),
                "ConstraintDescription": f"{kind}{z}: "
                + (
                    "a subnet ID like subnet-0123abcd"
                    if pattern == SUBNET
                    else "a route table ID like rtb-0123abcd"
                )
                + (" (empty when ZoneCount is 2)" if third else ""),
                "Description": f"zone {z}: {what}",
            }
    rules = {
        "ThirdZoneGiven": {
            "RuleCondition": equals(ref("ZoneCount"), "3"),
            "Assertions": [
                {
                    "Assert": nonempty(f"{kind}C"),
                    "AssertDescription": f"{kind}C is required when ZoneCount is 3",
                }
                for kind, *_ in kinds
            ],
        }
    }
    resources: dict[str, Any] = {
        "LoadBalancer": {
            "Type": "AWS::ElasticLoadBalancingV2::LoadBalancer",
            "Properties": {
                "Type": "gateway",  # no Name: 32 characters at most, CloudFormation names it
                "Subnets": per_zone(lambda z: ref(f"ApplianceSubnet{z}")),
                "LoadBalancerAttributes": [
                    {"Key": "load_balancing.cross_zone.enabled", "Value": "false"}
                ],
                "Tags": tags(sub("${Name}-gwlb")),
            },
        },
        "TargetGroup": {
            "Type": "AWS::ElasticLoadBalancingV2::TargetGroup",
            "Properties": {
                "Protocol": "GENEVE",  # no Name: 32 characters at most
                "Port": GENEVE_PORT,
                "TargetType": "instance",
                "VpcId": ref("VpcId"),
                "HealthCheckProtocol": ref("HealthCheckProtocol"),
                "HealthCheckPort": ref("HealthCheckPort"),
                "HealthCheckPath": iff("HttpHealthCheck", ref("HealthCheckPath"), NO_VALUE),
                "HealthCheckIntervalSeconds": 10,
                "HealthyThresholdCount": 3,
                "UnhealthyThresholdCount": 3,
                "TargetGroupAttributes": [
                    {"Key": "deregistration_delay.timeout_seconds", "Value": "30"}
                ],
                "Tags": tags(sub("${Name}-appliances")),
            },
        },
        "Listener": {
            "Type": "AWS::ElasticLoadBalancingV2::Listener",
            "Properties": {
                "LoadBalancerArn": ref("LoadBalancer"),
                "DefaultActions": [{"Type": "forward", "TargetGroupArn": ref("TargetGroup")}],
            },
        },
        "EndpointService": {
            "Type": "AWS::EC2::VPCEndpointService",
            "Properties": {
                "GatewayLoadBalancerArns": [ref("LoadBalancer")],
                "AcceptanceRequired": False,
            },
        },
    }
    outputs: dict[str, Any] = {
        "TargetGroupArn": output(
            ref("TargetGroup"),
            "give it to the fleet stack as GwlbTargetGroupArn",
            "GwlbTargetGroupArn",
        ),
        "LoadBalancerArn": output(ref("LoadBalancer"), "the Gateway Load Balancer"),
        "EndpointServiceName": output(
            sub("com.amazonaws.vpce.${AWS::Region}.${EndpointService}"),
            "the endpoint service: other VPCs' GWLB endpoints use this name",
        ),
    }
    for i, z in enumerate(ZONES):
        block = {
            f"Endpoint{z}": {
                "Type": "AWS::EC2::VPCEndpoint",
                "Properties": {
                    "VpcId": ref("VpcId"),
                    "VpcEndpointType": "GatewayLoadBalancer",
                    "ServiceName": sub("com.amazonaws.vpce.${AWS::Region}.${EndpointService}"),
                    "SubnetIds": [ref(f"EndpointSubnet{z}")],
                },
            },
        }
        resources.update({k: when(i, v) for k, v in block.items()})
        resources[f"Route{z}"] = {
            "Type": "AWS::EC2::Route",
            "Condition": "CreateRoutesC" if i == 2 else "CreateRoutesAB",
            "Properties": {
                "RouteTableId": ref(f"ProtectedRouteTable{z}"),
                "DestinationCidrBlock": "0.0.0.0/0",
                "VpcEndpointId": ref(f"Endpoint{z}"),
            },
        }
        outputs[f"Endpoint{z}"] = when(i, output(ref(f"Endpoint{z}"), f"zone {z}: GWLB endpoint"))
    return {
        **header(
            "Cloud Spectra Gateway: a Gateway Load Balancer (GENEVE) in front of the "
            "appliance fleet, its endpoint service, one endpoint per zone and the routes "
            "through them"
        ),
        "Parameters": params,
        "Rules": rules,
        "Conditions": {
            THIRD: equals(ref("ZoneCount"), "3"),
            "HttpHealthCheck": equals(ref("HealthCheckProtocol"), "HTTP"),
            "CreateRoutesAB": equals(ref("CreateRoutes"), "true"),
            "CreateRoutesC": {"Fn::And": [{"Condition": THIRD}, {"Condition": "CreateRoutesAB"}]},
        },
        "Resources": resources,
        "Outputs": outputs,
    }


TEMPLATES = {"new-vpc.yaml": new_vpc, "existing-vpc.yaml": existing_vpc, "gwlb.yaml": gwlb}
BANNER = (
    "# Generated by deploy/cloudformation/generate.py: edit that file and run it again;\n"
    "# tests/unit/deploy checks this file is its output. See docs/deploy.md.\n"
)


SHORT = {
    "Ref",
    "Condition",
    "Fn::Sub",
    "Fn::If",
    "Fn::Equals",
    "Fn::Not",
    "Fn::And",
    "Fn::Or",
    "Fn::Select",
    "Fn::Cidr",
    "Fn::Join",
    "Fn::GetAtt",
    "Fn::Base64",
}


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]  # PyYAML has no stubs here
    """Block YAML, no anchors, intrinsic functions in their short form (``!Ref X``)
    where YAML allows it (a tag cannot carry another tag: ``Fn::Base64: !Sub ...``)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def represent_dict(self, data: Any) -> yaml.Node:
        if len(data) == 1:
            ((key, value),) = data.items()
            if key in SHORT:
                tag = "!" + key.removeprefix("Fn::")
                if key == "Fn::GetAtt":
                    return self.represent_scalar(tag, f"{value[0]}.{value[1]}")
                if isinstance(value, str):
                    return self.represent_scalar(tag, value)
                if isinstance(value, list):
                    return self.represent_sequence(tag, value)
        return super().represent_dict(data)


_Dumper.add_representer(dict, _Dumper.represent_dict)


def render(name: str) -> str:
    """The YAML text of template ``name`` (one of :data:`TEMPLATES`)."""
    body = yaml.dump(
        TEMPLATES[name](), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=False
    )
    return BANNER + str(body)


def main(argv: list[str]) -> int:
    """Write every template next to this file (``--check``: only compare, exit 1 on drift)."""
    check = "--check" in argv
    stale = []
    for name in TEMPLATES:
        path = HERE / name
        text = render(name)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(name)
        else:
            path.write_text(text)
    if stale:
        sys.stderr.write(f"stale: {', '.join(stale)}: run python {Path(__file__).name}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
