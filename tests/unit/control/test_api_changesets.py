"""``POST /v1/aws/changesets`` and ``spectra aws changeset`` against a real config API on
loopback, staging with the core role's credentials in moto's CloudFormation."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from control.api import ApiSettings, create_app, token_entry
from control.aws.changeset import ChangeSetStager, stagers_from
from control.cli import main
from control.cli_config import Api
from control.config import parse_document
from control.config.document import ConfigDocument
from control.config.operations import ApiToken
from control.servers import HttpServer, ServerThread
from control.store import SqliteStore
from tests.fakes.awsfault import Fault, FaultProxy
from tests.unit.control.aws.conftest import admin_client, base_session

INSTANCE = "arn:aws:iam::111122223333:role/gw-instance"
Stagers = Callable[[ConfigDocument], ChangeSetStager] | None


def document(endpoint: str, name: str | None) -> dict[str, Any]:
    aws: dict[str, Any] = {"region": "eu-west-1", "endpoint_url": endpoint}
    if name is not None:
        aws["deployment"] = {"name": name, "external_id": "ext-api-1"}
    return {"interfaces": {"inside": "inside", "outside": "outside"}, "aws": aws}


class Served:
    """A config API on loopback over a fresh store holding ``doc``."""

    def __init__(self, tmp: Path, doc: dict[str, Any], stagers: Stagers) -> None:
        self.admin, admin = token_entry("ops", "admin")
        self.reader, reader = token_entry("viewer", "read")
        path = tmp / f"{uuid.uuid4().hex}.db"
        store = SqliteStore(path)
        store.put(parse_document(doc), 0, "seed")
        store.close()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        settings = ApiSettings(
            extra_tokens=tuple(ApiToken.model_validate(e) for e in (admin, reader)),
            changesets=stagers,
        )
        self.servers = ServerThread(
            [
                HttpServer(
                    "api",
                    lambda: create_app(SqliteStore(path), dict, settings),
                    "127.0.0.1",
                    self.port,
                )
            ]
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def post(self, body: Any, token: str | None = None) -> tuple[int, Any]:
        status, found, _ = Api(self.url, token or self.admin).call(
            "POST", "/v1/aws/changesets", body
        )
        return status, found


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[dict[str, Any], Stagers], Served]]:
    made: list[Served] = []

    def start(doc: dict[str, Any], stagers: Stagers) -> Served:
        served = Served(tmp_path, doc, stagers)
        served.servers.start()
        made.append(served)
        return served

    yield start
    for served in made:
        served.servers.stop()


def appliance(identity: Any = None) -> Stagers:
    return stagers_from(lambda: identity, base=base_session())


def test_without_aws_the_answer_is_409_with_the_reason(
    serve: Callable[[dict[str, Any], Stagers], Served], moto_endpoint: str
) -> None:
    served = serve(document(moto_endpoint, "gw"), None)
    status, body = served.post({"parameters": {"InstanceRoleArn": INSTANCE}})
    assert status == 409
    assert body["error"]["code"] == "aws_unavailable"
    assert "AWS is not configured for this config API" in body["error"]["message"]
    got = CliRunner(env={"SPECTRA_API": served.url, "SPECTRA_TOKEN": served.admin}).invoke(
        main, ["aws", "changeset", "--param", f"InstanceRoleArn={INSTANCE}"]
    )
    assert got.exit_code == 1
    assert "HTTP 409: AWS is not configured" in got.output
    bad = CliRunner(env={"SPECTRA_API": served.url}).invoke(
        main, ["aws", "changeset", "--param", "InstanceRoleArn"]
    )
    assert bad.exit_code == 2 and "'InstanceRoleArn': expected KEY=VALUE" in bad.output


def test_without_a_deployment_name_the_answer_is_409(
    serve: Callable[[dict[str, Any], Stagers], Served], moto_endpoint: str
) -> None:
    served = serve(document(moto_endpoint, None), appliance())
    status, body = served.post({})
    assert (status, body["error"]["code"]) == (409, "aws_unavailable")
    assert body["error"]["message"].startswith("aws.deployment is not set")


def test_stages_with_the_api_and_the_cli(
    serve: Callable[[dict[str, Any], Stagers], Served], moto_endpoint: str
) -> None:
    name = f"gw{uuid.uuid4().hex[:8]}"
    served = serve(document(moto_endpoint, name), appliance())
    status, body = served.post({"parameters": {"InstanceRoleArn": INSTANCE}})
    assert status == 201, body
    staged = body["change_set"]
    assert body["config_version"] == 1
    assert (staged["stack_name"], staged["features"]) == (f"{name}-operational-roles", ["core"])
    cfn = admin_client(moto_endpoint, "cloudformation")
    found = cfn.describe_change_set(ChangeSetName=staged["change_set_id"])
    assert found["ChangeSetName"] == staged["change_set_name"]
    sent = {p["ParameterKey"]: p["ParameterValue"] for p in found["Parameters"]}
    assert [k for k, v in sent.items() if k.startswith("Enable") and v == "true"] == ["EnableCore"]
    assert (sent["Name"], sent["ExternalId"], sent["InstanceRoleArn"]) == (
        name,
        "ext-api-1",
        INSTANCE,
    )
    args = ["aws", "changeset", "--stack-name", f"{name}-roles"]
    args += ["--param", f"InstanceRoleArn={INSTANCE}"]
    got = CliRunner(env={"SPECTRA_API": served.url, "SPECTRA_TOKEN": served.admin}).invoke(
        main, args
    )
    assert got.exit_code == 0, got.output
    printed = json.loads(got.stdout)
    assert printed["change_set"]["stack_name"] == f"{name}-roles"
    assert f"execute-change-set --stack-name {name}-roles" in got.stderr
    # a read token may not stage
    assert served.post({"parameters": {"InstanceRoleArn": INSTANCE}}, served.reader)[0] == 403


def test_widening_is_422_and_bad_input_names_the_field(
    serve: Callable[[dict[str, Any], Stagers], Served], moto_endpoint: str
) -> None:
    served = serve(document(moto_endpoint, f"gw{uuid.uuid4().hex[:8]}"), appliance())
    status, body = served.post(
        {"parameters": {"InstanceRoleArn": "arn:aws:iam::111122223333:root"}}
    )
    assert (status, body["error"]["code"]) == (422, "change_set_refused")
    assert "parameters.InstanceRoleArn" in body["error"]["message"]
    status, body = served.post({"parameters": {"InstanceRoleArn": 7}})
    assert status == 422 and body["error"]["message"].startswith("parameters: expected")
    status, body = served.post({"stack": "x"})
    assert status == 422 and "unknown field(s) stack" in body["error"]["message"]


def test_an_inert_core_role_is_409_with_the_reason(
    serve: Callable[[dict[str, Any], Stagers], Served], moto_endpoint: str
) -> None:
    with FaultProxy(moto_endpoint, [Fault("sts", "AssumeRole", "AccessDenied", 403)]) as proxy:
        served = serve(document(proxy.url, "gw"), appliance())
        status, body = served.post({"parameters": {"InstanceRoleArn": INSTANCE}})
    assert (status, body["error"]["code"]) == (409, "aws_unavailable")
    message = body["error"]["message"]
    assert message.startswith("the core operational role is inert: cannot assume ")
    assert ":role/gw-cross-account-role1 (core): AssumeRole: AccessDenied" in message
