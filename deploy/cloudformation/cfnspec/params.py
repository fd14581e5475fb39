"""The parameters, rules and conditions the fleet templates share."""

from __future__ import annotations

from typing import Any

from cfnspec.base import MGMT_CIDR, RTB, SUBNET, THIRD, ZONE, ZONES, equals, nonempty, ref


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
        "ApiPort": {
            "Type": "Number",
            "Default": 8080,
            "MinValue": 1,
            "MaxValue": 65535,
            "Description": "the appliance's API and dashboard port (api.port), opened from "
            "ManagementCidr",
        },
        "HttpsPort": {
            "Type": "Number",
            "Default": 443,
            "MinValue": 1,
            "MaxValue": 65535,
            "Description": "the appliance's HTTPS port (tls.appliance.port), opened from "
            "ManagementCidr: with tls.appliance on, the API port answers on loopback only",
        },
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


ACCEPTED = {SUBNET: "a subnet ID like subnet-0123abcd", RTB: "a route table ID like rtb-0123abcd"}


def vpc_id_parameter() -> dict[str, Any]:
    return {
        "Type": "String",
        "AllowedPattern": r"^vpc-[0-9a-f]{8,17}$",
        "ConstraintDescription": "VpcId: a VPC ID like vpc-0123abcd",
    }


def switch(description: str) -> dict[str, Any]:
    """A ``true``/``false`` parameter, ``true`` by default."""
    return {
        "Type": "String",
        "AllowedValues": ["true", "false"],
        "Default": "true",
        "Description": description,
    }


def zone_ids(kind: str, pattern: str, what: str, why: str = "") -> dict[str, Any]:
    """``<kind>A``, ``<kind>B`` (required) and ``<kind>C`` (empty unless ZoneCount is 3),
    each an ID matching ``pattern``."""
    out = {}
    for i, z in enumerate(ZONES):
        third = i == 2
        out[f"{kind}{z}"] = {
            "Type": "String",
            "AllowedPattern": f"^({pattern})?$" if third else f"^{pattern}$",
            **({"Default": ""} if third else {}),
            "ConstraintDescription": f"{kind}{z}: {ACCEPTED[pattern]}{why}"
            + (" (empty when ZoneCount is 2)" if third else ""),
            "Description": f"zone {z}: {what}",
        }
    return out


def third_zone_required(kinds: list[str]) -> list[dict[str, Any]]:
    """Assertions: each ``<kind>C`` is given (for the rule that holds with ZoneCount 3)."""
    return [
        {
            "Assert": nonempty(f"{kind}C"),
            "AssertDescription": f"{kind}C is required when ZoneCount is 3",
        }
        for kind in kinds
    ]
