"""The operational-role stack: least privilege (parliament, no wildcard actions, resource
scoping), trust limited to the two principals, the role-per-feature layout the session
factory expects, and cfn-lint clean."""

from __future__ import annotations

import json
import warnings
from types import ModuleType
from typing import Any

import pytest

from control.aws.features import SERVICE_FEATURES, Feature, role_name
from control.aws.template import TEMPLATE_PATH, RenderedRole, load, parameter_values, render

INSTANCE = "arn:aws:iam::111122223333:role/gw-instance"
HANDLER = "arn:aws:iam::123456789012:role/gw-cfn-handler"
EVERYTHING = {
    "Name": "gw",
    "ExternalId": "ext-1",
    "InstanceRoleArn": INSTANCE,
    "HandlerRoleArn": HANDLER,
    "OrganizationId": "o-abcdefghij",
    "EnableBedrock": "true",
    "EnableObservability": "true",
    "EnableEdge": "true",
    "VpcId": "vpc-0123abcd",
    "NotifyTopicArn": "arn:aws:sns:eu-west-1:123456789012:gw-takeovers",
    "LogBucket": "gw-flow-logs",
    "AuditAnchorBucket": "gw-audit-anchors",
}

UNSCOPED = {
    "autoscaling:DescribeAutoScalingGroups": (
        "Actions, resources, and condition keys for Amazon EC2 Auto Scaling"
    ),
    "autoscaling:DescribeAutoScalingInstances": (
        "Actions, resources, and condition keys for Amazon EC2 Auto Scaling"
    ),
    "ec2:DescribeAddresses": "Actions, resources, and condition keys for Amazon EC2",
    "ec2:DescribeInstanceTypes": "Actions, resources, and condition keys for Amazon EC2",
    "ec2:DescribeInstances": "Actions, resources, and condition keys for Amazon EC2",
    "ec2:DescribeLaunchTemplateVersions": "Actions, resources, and condition keys for Amazon EC2",
    "ec2:DescribeNetworkInterfaces": "Actions, resources, and condition keys for Amazon EC2",
    "ec2:DescribeRouteTables": "Actions, resources, and condition keys for Amazon EC2",
    "cloudwatch:PutMetricData": "Actions, resources, and condition keys for Amazon CloudWatch",
    "elasticloadbalancing:DescribeTargetGroups": (
        "Actions, resources, and condition keys for Elastic Load Balancing V2"
    ),
    "elasticloadbalancing:DescribeTargetHealth": (
        "Actions, resources, and condition keys for Elastic Load Balancing V2"
    ),
}
"""Actions AWS does not scope by resource (their Resource types column is empty in the
Service Authorization Reference page named); only these may have ``Resource: *``."""

IAM_PREFIX = {"bedrock-runtime": "bedrock", "elbv2": "elasticloadbalancing"}


@pytest.fixture(scope="module")
def parliament() -> ModuleType:
    with warnings.catch_warnings():  # parliament leaves its data files open at import
        warnings.simplefilter("ignore", ResourceWarning)
        import parliament

    return parliament


def roles(**params: str) -> list[RenderedRole]:
    _, template = load()
    return render(template, parameter_values(template, params))


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def statements(role: RenderedRole) -> list[dict[str, Any]]:
    return [s for doc in role.policies.values() for s in _listed(doc["Statement"])]


def test_every_feature_has_its_role_and_switch() -> None:
    _, template = load()
    made = {r.name: r for r in roles(**EVERYTHING)}
    assert sorted(made) == sorted(role_name("gw", f) for f in Feature)
    for feature in Feature:
        declared = template["Parameters"][feature.parameter]
        assert declared["AllowedValues"] == ["true", "false"]
    off = {f.parameter: "false" for f in Feature if f is not Feature.CORE}
    assert [r.name for r in roles(**{**EVERYTHING, **off})] == ["gw-cross-account-role1"]
    assert roles(**{**EVERYTHING, **off, "EnableCore": "false"}) == []


def test_each_service_is_allowed_in_its_features_role_only() -> None:
    by_feature = {int(r.name[-1]): r for r in roles(**EVERYTHING)}
    for service, feature in SERVICE_FEATURES.items():
        prefix = IAM_PREFIX.get(service, service) + ":"
        for number, role in by_feature.items():
            actions = [a for s in statements(role) for a in _listed(s["Action"])]
            has = any(a.startswith(prefix) for a in actions)
            assert has == (number == int(feature)), (service, role.name)


def test_trust_is_the_two_principals_with_external_id_and_org() -> None:
    for role in roles(**EVERYTHING):
        (statement,) = role.trust["Statement"]
        assert statement["Effect"] == "Allow"
        assert statement["Action"] == "sts:AssumeRole"
        assert set(statement["Principal"]) == {"AWS"}
        assert sorted(statement["Principal"]["AWS"]) == sorted([INSTANCE, HANDLER])
        assert statement["Condition"] == {
            "StringEquals": {"sts:ExternalId": "ext-1", "aws:PrincipalOrgID": "o-abcdefghij"}
        }
    plain = {**EVERYTHING, "HandlerRoleArn": "", "OrganizationId": ""}
    for role in roles(**plain):
        (statement,) = role.trust["Statement"]
        assert statement["Principal"] == {"AWS": [INSTANCE]}
        assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": "ext-1"}}


def test_no_wildcard_actions_and_scoped_resources(parliament: ModuleType) -> None:
    from parliament.statement import get_privilege_info

    unscoped_seen = set()
    for role in roles(**EVERYTHING):
        for statement in statements(role):
            assert statement["Effect"] == "Allow" and "NotAction" not in statement
            assert "NotResource" not in statement
            resources = _listed(statement["Resource"])
            for action in _listed(statement["Action"]):
                assert "*" not in action, f"{role.name}: wildcard action {action}"
                service, name = action.split(":")
                info = get_privilege_info(service, name)
                types = [t["resource_type"] for t in info["resource_types"]]
                if "*" in resources:
                    assert resources == ["*"]
                    assert action in UNSCOPED, f"{role.name}: {action} on * but AWS scopes it"
                    assert types == [""], f"{action}: AWS has resource types {types}"
                    unscoped_seen.add(action)
                else:
                    assert any(t for t in types), f"{action}: AWS does not scope it"
                    for arn in resources:
                        assert arn.startswith("arn:aws:"), arn
    assert unscoped_seen == set(UNSCOPED)


def _findings(parliament: ModuleType, document: dict[str, Any], community: bool) -> list[str]:
    found = parliament.analyze_policy_string(
        json.dumps(document), include_community_auditors=community
    ).findings
    return [f"{f.issue}: {f.detail}" for f in found]


def test_parliament_finds_nothing(parliament: ModuleType) -> None:
    """Default auditors over every policy, community auditors over the permissions.

    parliament reads every policy as an identity or resource policy, which must name a
    Resource; a trust policy may not (the role it sits on is the resource), so the role's
    own ARN is added for the analysis.  The community CREDENTIALS_EXPOSURE auditor flags
    sts:AssumeRole wherever it is allowed: in a trust policy that is the policy's purpose,
    so it is the one community finding accepted there."""
    for role in roles(**EVERYTHING):
        for name, document in role.policies.items():
            assert _findings(parliament, document, community=False) == [], (role.name, name)
            assert _findings(parliament, document, community=True) == [], (role.name, name)
        trust = json.loads(json.dumps(role.trust))
        for statement in trust["Statement"]:
            statement["Resource"] = f"arn:aws:iam::123456789012:role/{role.name}"
        assert _findings(parliament, trust, community=False) == []
        assert [f.split(":")[0] for f in _findings(parliament, trust, community=True)] == [
            "CREDENTIALS_EXPOSURE"
        ]


def test_parliament_would_catch_a_wide_policy(parliament: ModuleType) -> None:
    statement = {"Effect": "Allow", "Action": "ec2:ReplaceRoute", "Resource": "*"}
    wide = {"Version": "2012-10-17", "Statement": [statement]}
    assert any(f.startswith("RESOURCE_STAR") for f in _findings(parliament, wide, False))


def test_cfn_lint_is_clean() -> None:
    from cfnlint.api import lint_file

    assert [str(match) for match in lint_file(TEMPLATE_PATH)] == []
