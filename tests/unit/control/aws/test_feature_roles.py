"""One operational role per feature, against moto's IAM and STS: the roles are made from
the operational stack's own rendered template, and STS's trust check is played by
tests/fakes/ststrust.py (moto assumes any role it is asked)."""

from __future__ import annotations

import ast
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from control.aws import (
    SERVICE_FEATURES,
    DeploymentRoles,
    Feature,
    OperationalRole,
    RoleInert,
    SessionFactory,
    roles_of,
)
from control.aws.template import load, parameter_values, render
from control.config import parse_document
from control.config.aws import Aws as AwsSection
from tests.fakes.awsfault import FaultProxy
from tests.fakes.ststrust import trust_judge
from tests.unit.control.aws.conftest import REGION, admin_client, base_session

ACCOUNT = "123456789012"
INSTANCE_ROLE = f"arn:aws:iam::{ACCOUNT}:role/gw-instance"
EXTERNAL_ID = "ext-feature-42"


def deploy_roles(endpoint: str, name: str, **enable: str) -> list[str]:
    """Create in moto's IAM the roles the stack renders for ``enable`` (EnableX=...)."""
    _, template = load()
    params = parameter_values(
        template,
        {"Name": name, "ExternalId": EXTERNAL_ID, "InstanceRoleArn": INSTANCE_ROLE, **enable},
    )
    iam = admin_client(endpoint, "iam")
    made = []
    for role in render(template, params):
        iam.create_role(RoleName=role.name, AssumeRolePolicyDocument=json.dumps(role.trust))
        for policy, document in role.policies.items():
            iam.put_role_policy(
                RoleName=role.name, PolicyName=policy, PolicyDocument=json.dumps(document)
            )
        made.append(role.name)
    return made


@pytest.fixture
def sts_trust(moto_endpoint: str) -> Iterator[FaultProxy]:
    judge = trust_judge(admin_client(moto_endpoint, "iam"), INSTANCE_ROLE)
    with FaultProxy(moto_endpoint, judge=judge) as proxy:
        yield proxy


def factory_for(endpoint: str, proxy: FaultProxy, roles: Any) -> SessionFactory:
    return SessionFactory(
        REGION, endpoint, endpoints={"sts": proxy.url}, base=base_session(), role=roles
    )


def test_a_feature_without_its_role_is_inert_and_the_others_work(
    moto_endpoint: str, sts_trust: FaultProxy
) -> None:
    name = f"gw{uuid.uuid4().hex[:8]}"
    made = deploy_roles(moto_endpoint, name, EnableBedrock="true")
    assert made == [f"{name}-cross-account-role1", f"{name}-cross-account-role2"]
    factory = factory_for(
        moto_endpoint, sts_trust, DeploymentRoles(name, EXTERNAL_ID, account_id=ACCOUNT)
    )
    factory.client("ssm").describe_parameters()  # core
    bedrock_key = factory.credentials("bedrock-runtime").get_frozen_credentials().access_key
    with pytest.raises(RoleInert) as refused:
        factory.client("sns")  # observability: its role is not deployed
    reason = refused.value.reason
    assert f"role/{name}-cross-account-role3 (observability)" in reason
    assert "AccessDenied" in reason
    assert "EnableObservability is true" in reason
    factory.client("ec2").describe_route_tables()  # core still works after the refusal
    features = factory.status()["features"]
    assert features["core"]["state"] == "assumed"
    assert features["core"]["arn"] == f"arn:aws:iam::{ACCOUNT}:role/{name}-cross-account-role1"
    assert features["bedrock"]["arn"].endswith(f":role/{name}-cross-account-role2")
    assert features["observability"] == {
        "state": "inert",
        "role": f"{name}-cross-account-role3",
        "reason": reason,
    }
    assert features["edge"] == {"state": "not assumed yet", "role": f"{name}-cross-account-role4"}
    assert factory.status()["operational_role"] == {
        "state": "one role per feature",
        "deployment": name,
    }
    # each feature signs with its own role's keys
    core_key = factory.credentials("ssm").get_frozen_credentials().access_key
    assert len({core_key, bedrock_key, "testing"}) == 3
    assert sts_trust.calls[("sts", "AssumeRole")] == 3


def test_wrong_external_id_is_inert_with_the_reason(
    moto_endpoint: str, sts_trust: FaultProxy
) -> None:
    name = f"gw{uuid.uuid4().hex[:8]}"
    deploy_roles(moto_endpoint, name)
    good = factory_for(
        moto_endpoint, sts_trust, DeploymentRoles(name, EXTERNAL_ID, account_id=ACCOUNT)
    )
    good.client("ssm").describe_parameters()  # the role is there and trusts us
    bad = factory_for(
        moto_endpoint,
        sts_trust,
        DeploymentRoles(name, "not-the-external-id", "o-abcdefghij", account_id=ACCOUNT),
    )
    with pytest.raises(RoleInert) as refused:
        bad.client("ssm")
    reason = refused.value.reason
    assert f"cannot assume arn:aws:iam::{ACCOUNT}:role/{name}-cross-account-role1 (core)" in reason
    assert f"User: {INSTANCE_ROLE} is not authorized to perform: sts:AssumeRole" in reason
    assert "sts:ExternalId" in reason and "aws:PrincipalOrgID o-abcdefghij" in reason
    assert bad.status()["features"]["core"]["state"] == "inert"
    assert bad.inert_reason(Feature.CORE) == reason
    assert bad.inert_reason(Feature.BEDROCK) is None  # not tried yet


def test_one_explicit_role_serves_every_feature(moto_endpoint: str, sts_trust: FaultProxy) -> None:
    name = f"gw{uuid.uuid4().hex[:8]}"
    deploy_roles(moto_endpoint, name)
    role = OperationalRole(f"{name}-cross-account-role1", EXTERNAL_ID, account_id=ACCOUNT)
    factory = factory_for(moto_endpoint, sts_trust, role)
    factory.client("ssm").describe_parameters()
    factory.client("sns").list_topics()  # observability, but through the one role
    assert sts_trust.calls[("sts", "AssumeRole")] == 1
    assert {f["state"] for f in factory.status()["features"].values()} == {"assumed"}


def test_operational_role_wins_over_deployment() -> None:
    both = AwsSection.model_validate(
        {
            "region": REGION,
            "deployment": {"name": "gw", "external_id": "ext-1"},
            "operational_role": {"name": "legacy-role", "external_id": "ext-2"},
        }
    )
    assert roles_of(both, None) == OperationalRole("legacy-role", "ext-2")
    only = AwsSection.model_validate(
        {"region": REGION, "deployment": {"name": "gw", "external_id": "ext-1"}}
    )
    roles = roles_of(only, None)
    assert roles == DeploymentRoles("gw", "ext-1")
    assert roles.for_feature(Feature.EDGE).name == "gw-cross-account-role4"
    with pytest.raises(ValueError, match=r"aws\.deployment\.name"):
        parse_document(
            {
                "interfaces": {"inside": "inside", "outside": "outside"},
                "aws": {"deployment": {"name": "x" * 45, "external_id": "ext-1"}},
            }
        )


def _client_services(root: Path) -> set[str]:
    """Every literal service name the product passes to ``<something>.client(...)`` (or a
    module's own ``_client`` wrapper of it)."""
    found = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("client", "_client")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                found.add(node.args[0].value)
    return found


def test_every_operational_service_the_product_calls_has_a_feature() -> None:
    repo = Path(__file__).resolve().parents[4]
    called = _client_services(repo / "control") | _client_services(repo / "ai")
    assert "ec2" in called and "sns" in called  # the scan sees the real call sites
    missing = sorted(called - set(SERVICE_FEATURES))
    assert missing == []


def test_unknown_service_is_refused_naming_the_table(factory: SessionFactory) -> None:
    factory.configure(DeploymentRoles("gw", "ext-1", account_id=ACCOUNT))
    with pytest.raises(ValueError, match=r"no operational role is for 'sqs'.*SERVICE_FEATURES"):
        factory.client("sqs")
