"""The fleet's CloudFormation templates offline: generated, lint-clean, a least-privilege
instance role that matches what the product does as the instance, and bad parameter
values refused with the parameter named (``control.aws.stackcheck``)."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner

from control.aws.session import INSTANCE_OPERATIONS
from control.aws.stackcheck import check, load_template
from control.aws.template import RenderedRole, parameter_values, render
from control.cli import main

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[3]
CFN = ROOT / "deploy" / "cloudformation"
NAMES = ("new-vpc.yaml", "existing-vpc.yaml", "gwlb.yaml")
FLEET = ("new-vpc.yaml", "existing-vpc.yaml")
# Third-zone subnet parameters are empty by default and used only under ThirdZone
# (a Rules entry makes them required with ZoneCount 3): cfn-lint cannot know that.
ACCEPTED_WARNINGS = {"W1030"}


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cfn_generate", CFN / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["cfn_generate"] = module
    spec.loader.exec_module(module)
    return module


def template(name: str) -> dict[str, Any]:
    return load_template((CFN / name).read_text())


def ids(subnets: tuple[str, str], table: str) -> dict[str, str]:
    """Per zone A and B: two subnet IDs and a route table ID, well formed."""
    kinds = ((subnets[0], "subnet"), (subnets[1], "subnet"), (table, "rtb"))
    return {f"{k}{z}": f"{p}-0123456789abcde{i}" for i, z in enumerate("AB") for k, p in kinds}


GOOD: dict[str, dict[str, str]] = {
    "new-vpc.yaml": {
        "ZoneA": "eu-west-1a",
        "ZoneB": "eu-west-1b",
        "ImageId": "ami-0123456789abcdef0",
        "ManagementCidr": "203.0.113.0/24",
    },
    "gwlb.yaml": {
        "VpcId": "vpc-0123456789abcdef0",
        **ids(("ApplianceSubnet", "EndpointSubnet"), "ProtectedRouteTable"),
    },
}
GOOD["existing-vpc.yaml"] = {
    **GOOD["new-vpc.yaml"],
    "VpcId": "vpc-0123456789abcdef0",
    "VpcCidr": "10.1.0.0/16",
    **ids(("PublicSubnet", "PrivateSubnet"), "PrivateRouteTable"),
}


@pytest.mark.parametrize("name", NAMES)
def test_committed_template_is_the_generator_output(name: str) -> None:
    assert (CFN / name).read_text() == generator().render(name)


@pytest.mark.parametrize("name", NAMES)
def test_cfn_lint_finds_no_error(name: str) -> None:
    from cfnlint.api import ManualArgs, lint

    matches = lint((CFN / name).read_text(), config=ManualArgs(regions=["eu-west-1"]))
    found = {m.rule.id for m in matches}
    assert not [m for m in matches if m.rule.id.startswith("E")], [str(m) for m in matches]
    assert found <= ACCEPTED_WARNINGS, [str(m) for m in matches]


# -- the instance role ------------------------------------------------------------------


def statements(name: str) -> list[dict[str, Any]]:
    role = template(name)["Resources"]["InstanceRole"]["Properties"]
    (policy,) = role["Policies"]
    out: list[dict[str, Any]] = policy["PolicyDocument"]["Statement"]
    return out


def actions(stmt: dict[str, Any]) -> list[str]:
    found = stmt["Action"]
    return [found] if isinstance(found, str) else list(found)


@pytest.mark.parametrize("name", FLEET)
def test_instance_role_has_no_wildcard_action(name: str) -> None:
    for stmt in statements(name):
        assert stmt["Effect"] == "Allow"
        for action in actions(stmt):
            service, _, op = action.partition(":")
            assert service and op and "*" not in action and "?" not in action, action


@pytest.mark.parametrize("name", FLEET)
def test_instance_role_scopes_every_scopable_action(name: str) -> None:
    unscoped = generator().UNSCOPED
    for stmt in statements(name):
        if stmt["Resource"] == "*":
            assert set(actions(stmt)) <= set(unscoped), stmt["Sid"]
            continue
        for resource in stmt["Resource"]:
            text = (
                resource["Fn::Sub"]
                if isinstance(resource, dict) and "Fn::Sub" in resource
                else resource
            )
            text = text[0] if isinstance(text, list) else text
            if isinstance(text, str):
                assert not text.endswith(":*") and text != "*", (stmt["Sid"], text)
                if "network-interface/" in text or "elastic-ip/" in text:
                    cond = stmt["Condition"]["StringEquals"]
                    assert cond == {"aws:ResourceTag/spectra:deployment": {"Ref": "Name"}}


IAM_ACTIONS = {("dynamodb", "TransactWriteItems"): ("ConditionCheckItem", "PutItem")}
"""API operations IAM authorises as other actions: a DynamoDB transaction needs the
action of each of its items ("Using IAM with DynamoDB transactions", developer guide)."""


def _operations() -> dict[str, tuple[str, ...]]:
    return {
        service: tuple(a for op in ops for a in IAM_ACTIONS.get((service, op), (op,)))
        for service, ops in INSTANCE_OPERATIONS.items()
    }


@pytest.mark.parametrize("name", FLEET)
def test_instance_role_allows_exactly_the_instance_operations(name: str) -> None:
    granted = {a for stmt in statements(name) for a in actions(stmt)}
    operations = _operations()
    for action in granted:
        service, _, op = action.partition(":")
        patterns = operations.get(service, ())
        assert any(fnmatch.fnmatchcase(op, p) for p in patterns), (
            f"{action}: not done as the instance"
        )
    for service, ops in operations.items():
        for op in ops:
            if "*" in op or (service, op) == ("sts", "GetCallerIdentity"):
                continue  # GetCallerIdentity needs no permission; Describe*: explicit ones
            assert f"{service}:{op}" in granted, f"{service}:{op} is done as the instance"
    describes = {a for a in granted if a.startswith("ec2:Describe")}
    assert describes == {a for a in generator().UNSCOPED if a.startswith("ec2:")}


@pytest.mark.parametrize("name", FLEET)
def test_assume_role_only_on_the_deployment_operational_roles(name: str) -> None:
    (stmt,) = [s for s in statements(name) if "sts:AssumeRole" in actions(s)]
    (resource,) = stmt["Resource"]
    text = resource["Fn::Sub"][0]
    assert text.endswith(":role/${Name}-cross-account-role*")


@pytest.mark.parametrize("name", FLEET)
def test_launch_template_requires_imdsv2_and_encrypts_ebs(name: str) -> None:
    res = template(name)["Resources"]
    for z in "ABC":
        data = res[f"LaunchTemplate{z}"]["Properties"]["LaunchTemplateData"]
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        assert data["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
        assert all(b["Ebs"]["Encrypted"] is True for b in data["BlockDeviceMappings"])


LEASE_ARN = {
    "Fn::Sub": "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}"
    ":table/${Name}-leader-lease"
}
"""What ``Fn::GetAtt LeaseTable.Arn`` is once the stack made the table (its TableName)."""


def _rendered_role(name: str, **params: str) -> RenderedRole:
    """The instance role as CloudFormation would create it for the GOOD parameters."""
    resources = template(name)["Resources"]
    assert resources["LeaseTable"]["Properties"]["TableName"] == {"Fn::Sub": "${Name}-leader-lease"}
    text = json.dumps(resources["InstanceRole"])
    text = text.replace(json.dumps({"Fn::GetAtt": ["LeaseTable", "Arn"]}), json.dumps(LEASE_ARN))
    assert "Fn::GetAtt" not in text
    one = {**template(name), "Resources": {"InstanceRole": json.loads(text)}}
    (role,) = render(one, parameter_values(one, {**GOOD[name], **params}))
    return role


@pytest.mark.parametrize("name", FLEET)
@pytest.mark.parametrize("account", [None, "111122223333"])
def test_parliament_finds_nothing_in_the_instance_role(name: str, account: str | None) -> None:
    """Default auditors (parliament's own run) find nothing in the rendered inline policy
    (operational roles in this account, and in another) nor in EC2's trust policy, with
    the role's ARN added as its Resource (parliament reads every policy as one that must
    name a Resource). The community auditors find nothing either, but for
    CREDENTIALS_EXPOSURE (medium) on the one ``sts:AssumeRole`` statement, which they flag
    wherever it is allowed: assuming the deployment's operational roles, and only those,
    is what the instance role is for."""
    with warnings.catch_warnings():  # parliament leaves its data files open at import
        warnings.simplefilter("ignore", ResourceWarning)
        import parliament

    def findings(document: dict[str, Any], community: bool) -> list[str]:
        found = parliament.analyze_policy_string(
            json.dumps(document), include_community_auditors=community
        ).findings
        return [f"{f.issue} ({f.severity}): {f.detail}" for f in found]

    role = _rendered_role(name, **({"OperationalRoleAccount": account} if account else {}))
    (document,) = role.policies.values()
    assumed = [s["Resource"] for s in document["Statement"] if s["Action"] == ["sts:AssumeRole"]]
    home = account or "123456789012"
    assert assumed == [[f"arn:aws:iam::{home}:role/spectra-cross-account-role*"]]
    assert findings(document, community=False) == []
    others = [s for s in document["Statement"] if s["Action"] != ["sts:AssumeRole"]]
    assert findings({**document, "Statement": others}, community=True) == []
    assume = [s for s in document["Statement"] if s["Action"] == ["sts:AssumeRole"]]
    found = findings({**document, "Statement": assume}, community=True)
    assert [f.split(" ")[0] for f in found] == ["CREDENTIALS_EXPOSURE"]
    trust = json.loads(json.dumps(role.trust))
    for statement in trust["Statement"]:
        assert statement["Principal"] == {"Service": "ec2.amazonaws.com"}
        statement["Resource"] = f"arn:aws:iam::123456789012:role/{role.name}"
    assert findings(trust, community=False) == []


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_good_parameters_pass(name: str) -> None:
    assert check(template(name), GOOD[name]) == []


@pytest.mark.parametrize("name", NAMES)
def test_one_zone_is_refused_naming_zone_count(name: str) -> None:
    (problem,) = check(template(name), {**GOOD[name], "ZoneCount": "1"})
    assert problem.parameter == "ZoneCount"
    assert "['2', '3']" in problem.message


@pytest.mark.parametrize("name", FLEET)
def test_same_zone_twice_is_refused_by_rule(name: str) -> None:
    (problem,) = check(template(name), {**GOOD[name], "ZoneB": "eu-west-1a"})
    assert problem.parameter == "ZoneA, ZoneB"
    assert "DistinctZones" in problem.message


@pytest.mark.parametrize("name", FLEET)
def test_third_zone_required_with_zone_count_3(name: str) -> None:
    problems = check(template(name), {**GOOD[name], "ZoneCount": "3"})
    assert "ZoneC" in [p.parameter for p in problems]
    if name == "existing-vpc.yaml":
        assert {"PublicSubnetC", "PrivateSubnetC", "PrivateRouteTableC"} <= {
            p.parameter for p in problems
        }


@pytest.mark.parametrize("name", FLEET)
@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "10.0.0.0/0", "203.0.113.0", "any"])
def test_open_management_cidr_is_refused(name: str, cidr: str) -> None:
    (problem,) = check(template(name), {**GOOD[name], "ManagementCidr": cidr})
    assert problem.parameter == "ManagementCidr"
    assert "0.0.0.0/0 is refused" in problem.message


@pytest.mark.parametrize("value", ["", "subnet-0123abcd", "rtb-XYZ"])
def test_private_subnet_without_route_table_is_refused(value: str) -> None:
    given = {**GOOD["existing-vpc.yaml"], "PrivateRouteTableB": value}
    (problem,) = check(template("existing-vpc.yaml"), given)
    assert problem.parameter == "PrivateRouteTableB"
    assert "route table ID like rtb-" in problem.message


def test_missing_route_table_is_required() -> None:
    given = dict(GOOD["existing-vpc.yaml"])
    del given["PrivateRouteTableA"]
    (problem,) = check(template("existing-vpc.yaml"), given)
    assert (problem.parameter, problem.message) == (
        "PrivateRouteTableA",
        "required: the parameter has no default",
    )


def test_unknown_parameter_is_named() -> None:
    (problem,) = check(template("gwlb.yaml"), {**GOOD["gwlb.yaml"], "Zone": "x"})
    assert problem.parameter == "Zone"


def test_cli_validate_stack(tmp_path: Path) -> None:
    path = str(CFN / "existing-vpc.yaml")
    args = [f"--param={k}={v}" for k, v in GOOD["existing-vpc.yaml"].items()]
    ok = CliRunner().invoke(main, ["aws", "validate-stack", path, *args])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(
        main, ["aws", "validate-stack", path, *args, "--param", "ManagementCidr=0.0.0.0/0"]
    )
    assert bad.exit_code == 2
    assert "ManagementCidr: '0.0.0.0/0'" in bad.output
    worse = CliRunner().invoke(main, ["aws", "validate-stack", path, "--param", "oops"])
    assert worse.exit_code == 2 and "expected KEY=VALUE" in worse.output


def test_template_defaults_are_the_product_defaults() -> None:
    """The names and ports the templates hard-code are the product's own defaults."""
    from control.aws.lease import KEY
    from control.config.aws import Lifecycle
    from control.config.document import GENEVE_PORT
    from control.config.network import GwlbHealthCheck
    from control.config.operations import Api
    from control.config.proxies import ApplianceTls

    for name in FLEET:
        t = template(name)
        params = t["Parameters"]
        assert params["ApiPort"]["Default"] == Api().port
        assert params["HttpsPort"]["Default"] == ApplianceTls.model_fields["port"].default
        assert params["HealthCheckPort"]["Default"] == GwlbHealthCheck().port
        assert t["Resources"]["LeaseTable"]["Properties"]["KeySchema"] == [
            {"AttributeName": KEY, "KeyType": "HASH"}
        ]
        hooks = t["Resources"]["GroupA"]["Properties"]["LifecycleHookSpecificationList"]
        assert [h["LifecycleHookName"] for h in hooks] == [
            Lifecycle().launch_hook,
            Lifecycle().termination_hook,
        ]
        ingress = t["Resources"]["OutsideSecurityGroup"]["Properties"]["SecurityGroupIngress"]
        assert {"IpProtocol": "udp", "FromPort": GENEVE_PORT} in [
            {k: r[k] for k in ("IpProtocol", "FromPort")} for r in ingress
        ]
    target = template("gwlb.yaml")["Resources"]["TargetGroup"]["Properties"]
    assert (target["Protocol"], target["Port"]) == ("GENEVE", GENEVE_PORT)
