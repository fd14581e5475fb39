"""The instance role: exactly what the product does as the instance
(``control.aws.session.INSTANCE_OPERATIONS``), each action scoped to this deployment."""

from __future__ import annotations

from typing import Any

from cfnspec.base import TAG, arn, att, iff, ref, sub

UNSCOPED = {
    "ec2:DescribeNetworkInterfaces": "EC2 Describe* actions support no resource-level permissions",
    "ec2:DescribeAddresses": "EC2 Describe* actions support no resource-level permissions",
    "autoscaling:DescribeAutoScalingInstances": "Auto Scaling Describe* actions support "
    "no resource-level permissions",
}
"""The instance role's actions granted on ``Resource: "*"``, each with the reason."""


def instance_role() -> dict[str, Any]:
    """The instance profile's role: exactly ``control.aws.session.INSTANCE_OPERATIONS``
    each scoped to this deployment's resources.  The instance role never writes: config
    writes and the first boot's admin token go through the operational role."""
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
            "Sid": "LeaderLease",
            "Effect": "Allow",
            "Action": [
                "dynamodb:GetItem",
                "dynamodb:PutItem",
                "dynamodb:UpdateItem",
                "dynamodb:ConditionCheckItem",
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
