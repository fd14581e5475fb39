"""Change sets of the operational-role stack, against moto's CloudFormation: features
follow the document, the trust check runs before CreateChangeSet, nothing is executed."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from control.aws.changeset import (
    ChangeSetRefused,
    ChangeSetRequest,
    ChangeSetStager,
    ChangeSetUnavailable,
    document_parameters,
)
from control.aws.features import Feature, enabled_features
from control.aws.template import TEMPLATE_PATH
from control.config import parse_document
from control.config.document import ConfigDocument
from tests.unit.control.aws.conftest import admin_client

INSTANCE = "arn:aws:iam::111122223333:role/gw-instance"
HANDLER = "arn:aws:iam::123456789012:role/gw-handler"


def document(name: str, *, bedrock: bool = False, cloudwatch: bool = False) -> ConfigDocument:
    raw: dict[str, Any] = {
        "interfaces": {"inside": "inside", "outside": "outside"},
        "aws": {"region": "eu-west-1", "deployment": {"name": name, "external_id": "ext-77"}},
        "metrics": {"cloudwatch": cloudwatch},
    }
    if bedrock:
        raw["ai"] = {
            "providers": {"br": {"kind": "bedrock", "base_url": "http://b", "region": "eu-west-1"}},
            "routes": [{"pattern": "*", "provider": "br"}],
        }
    return parse_document(raw)


def stager(endpoint: str, template: Path = TEMPLATE_PATH) -> ChangeSetStager:
    return ChangeSetStager(admin_client(endpoint, "cloudformation"), template, wait_s=5.0)


def change_sets(endpoint: str, stack: str) -> list[dict[str, Any]]:
    """The stack's change sets (moto's ListChangeSets answers every stack's: filtered)."""
    cfn = admin_client(endpoint, "cloudformation")
    found = cfn.list_change_sets(StackName=stack)["Summaries"]
    return [s for s in found if f":stack/{stack}/" in s["StackId"]]


def test_features_follow_the_document() -> None:
    assert enabled_features(document("gw")) == {Feature.CORE}
    both = document("gw", bedrock=True, cloudwatch=True)
    assert enabled_features(both) == {Feature.CORE, Feature.BEDROCK, Feature.OBSERVABILITY}
    params = document_parameters(both)
    assert (params["EnableBedrock"], params["EnableEdge"]) == ("true", "false")
    assert (params["Name"], params["ExternalId"]) == ("gw", "ext-77")
    bare = parse_document({"interfaces": {"inside": "inside", "outside": "outside"}})
    with pytest.raises(ChangeSetUnavailable, match=r"aws\.deployment is not set"):
        document_parameters(bare)


def test_create_then_update_when_bedrock_is_turned_on(moto_endpoint: str) -> None:
    name = f"gw{uuid.uuid4().hex[:8]}"
    first = stager(moto_endpoint).stage(
        document(name),
        ChangeSetRequest(parameters={"InstanceRoleArn": INSTANCE, "HandlerRoleArn": HANDLER}),
    )
    assert (first.stack_name, first.change_set_type) == (f"{name}-operational-roles", "CREATE")
    assert first.features == ("core",)
    assert first.status == "CREATE_COMPLETE"
    assert first.parameters["EnableBedrock"] == "false"
    assert [s["ChangeSetName"] for s in change_sets(moto_endpoint, first.stack_name)] == [
        first.change_set_name
    ]
    cfn = admin_client(moto_endpoint, "cloudformation")
    cfn.execute_change_set(ChangeSetName=first.change_set_id, StackName=first.stack_name)
    iam = admin_client(moto_endpoint, "iam")
    assert iam.get_role(RoleName=f"{name}-cross-account-role1")["Role"]["RoleName"]
    # the document turns Bedrock on: an UPDATE, principals kept from the deployed stack
    second = stager(moto_endpoint).stage(document(name, bedrock=True), ChangeSetRequest())
    assert second.change_set_type == "UPDATE"
    assert second.features == ("core", "bedrock")
    assert second.parameters["InstanceRoleArn"] == INSTANCE
    assert second.parameters["HandlerRoleArn"] == HANDLER
    staged = cfn.describe_change_set(ChangeSetName=second.change_set_id)
    sent = {p["ParameterKey"]: p["ParameterValue"] for p in staged["Parameters"]}
    assert sent["EnableBedrock"] == "true"
    # staged, not executed: the Bedrock role does not exist until the operator runs it
    with pytest.raises(iam.exceptions.NoSuchEntityException):
        iam.get_role(RoleName=f"{name}-cross-account-role2")


def test_changing_the_principals_of_a_deployed_stack_is_refused(moto_endpoint: str) -> None:
    name = f"gw{uuid.uuid4().hex[:8]}"
    first = stager(moto_endpoint).stage(
        document(name), ChangeSetRequest(parameters={"InstanceRoleArn": INSTANCE})
    )
    cfn = admin_client(moto_endpoint, "cloudformation")
    cfn.execute_change_set(ChangeSetName=first.change_set_id, StackName=first.stack_name)
    other = "arn:aws:iam::999988887777:role/someone-else"
    with pytest.raises(ChangeSetRefused, match=r"parameters\.HandlerRoleArn: the deployed stack"):
        stager(moto_endpoint).stage(
            document(name), ChangeSetRequest(parameters={"HandlerRoleArn": other})
        )
    assert len(change_sets(moto_endpoint, first.stack_name)) == 1  # nothing new staged


@pytest.mark.parametrize(
    ("value", "field"),
    [("arn:aws:iam::111122223333:root", "InstanceRoleArn"), ("*", "HandlerRoleArn")],
)
def test_accounts_and_wildcards_are_not_principals(
    moto_endpoint: str, value: str, field: str
) -> None:
    name = f"gw{uuid.uuid4().hex[:8]}"
    params = {"InstanceRoleArn": INSTANCE, field: value}
    with pytest.raises(ChangeSetRefused, match=rf"parameters\.{field} .*expected a role ARN"):
        stager(moto_endpoint).stage(document(name), ChangeSetRequest(parameters=params))
    assert change_sets(moto_endpoint, f"{name}-operational-roles") == []


def test_a_template_trusting_more_is_refused_before_create(
    moto_endpoint: str, tmp_path: Path
) -> None:
    widened = tmp_path / "widened.yaml"
    text = TEMPLATE_PATH.read_text()
    marker = "                  - [{Ref: InstanceRoleArn}]\n"
    assert text.count(marker) == 4
    widened.write_text(
        text.replace(
            marker,
            '                  - [{Ref: InstanceRoleArn}, {"Fn::Sub": '
            '"arn:aws:iam::${AWS::AccountId}:root"}]\n',
            1,
        )
    )
    name = f"gw{uuid.uuid4().hex[:8]}"
    with pytest.raises(
        ChangeSetRefused,
        match=rf"{name}-cross-account-role1 trust statement 0: would trust "
        r"arn:aws:iam::123456789012:root beyond the two principals",
    ):
        stager(moto_endpoint, widened).stage(
            document(name), ChangeSetRequest(parameters={"InstanceRoleArn": INSTANCE})
        )
    assert change_sets(moto_endpoint, f"{name}-operational-roles") == []


def test_document_parameters_cannot_be_overridden(moto_endpoint: str) -> None:
    with pytest.raises(ChangeSetRefused, match="EnableBedrock not accepted"):
        stager(moto_endpoint).stage(
            document("gw"),
            ChangeSetRequest(parameters={"InstanceRoleArn": INSTANCE, "EnableBedrock": "true"}),
        )
