"""The fleet: per zone the gateway ENI, Elastic IP, launch template and Auto Scaling
group; once the instance profile, lease table and security groups."""

from __future__ import annotations

from typing import Any

from cfnspec.base import (
    AZ_TAG,
    GENEVE_PORT,
    LAUNCH_HOOK,
    LEASE_KEY,
    NO_VALUE,
    TAG,
    TERMINATE_HOOK,
    THIRD,
    ZONES,
    att,
    iff,
    output,
    ref,
    sub,
    tags,
    when,
)
from cfnspec.role import instance_role

HTTPS = "API and dashboard over HTTPS (tls.appliance)"


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
                    rule("tcp", ref("HttpsPort"), ref("ManagementCidr"), HTTPS),
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
    second = (
        ("ManagementSsh2", 22, "SSH"),
        ("ManagementApi2", ref("ApiPort"), "API and dashboard"),
        ("ManagementHttps2", ref("HttpsPort"), HTTPS),
    )
    for key, port, what in second:
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
                # the core operational role may version only its deployment's templates
                "TagSpecifications": [
                    {
                        "ResourceType": "launch-template",
                        "Tags": [{"Key": TAG, "Value": ref("Name")}],
                    }
                ],
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
        f"DashboardHttpsUrl{z}": output(
            sub(f"https://${{ElasticIp{z}}}:${{HttpsPort}}/"),
            f"zone {z}: the same over HTTPS once tls.appliance is on (the plain URL then "
            "answers on loopback only)",
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
