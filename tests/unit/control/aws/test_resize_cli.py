"""``spectra aws resize`` end to end against a moto server: the document gives the AWS
side, the Auto Scaling group replaces the standby, and no gateway ever reports it as a
standby (no agent runs), so the resize stops at ``replace_standby`` with exit status 1,
the leader untouched, and says so (``--json``); bad input is refused before anything is
changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from control.cli import main
from control.config import parse_document
from control.store import SqliteStore
from tests.unit.control.aws.conftest import REGION
from tests.unit.control.aws.test_resize import AZ, NEW, OLD, ROLE, World, _versions, _world

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def _store(tmp_path: Path, world: World, endpoint: str) -> str:
    doc: dict[str, Any] = {
        "interfaces": {"inside": "eth1", "outside": "eth0"},
        "aws": {
            "region": REGION,
            "endpoint_url": endpoint,
            "operational_role": {
                "name": ROLE.name,
                "external_id": ROLE.external_id,
                "account_id": ROLE.account_id,
            },
            "lease": {"table": world.table},
            "zones": {
                AZ: {"nat_address": "10.0.101.100", "elastic_ip_allocation_id": world.allocation}
            },
        },
    }
    path = tmp_path / "config.db"
    store = SqliteStore(path)
    try:
        store.put(parse_document(doc), 0, "test")
    finally:
        store.close()
    return f"local:{path}"


@pytest.fixture
def operator(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's own credentials (botocore's default chain), which moto accepts."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


def test_no_gateway_reports_the_replacement_so_it_stops_before_the_leader(
    moto_endpoint: str, tmp_path: Path, operator: None
) -> None:
    world = _world(moto_endpoint)
    store = _store(tmp_path, world, moto_endpoint)
    result = CliRunner().invoke(
        main,
        ["aws", "resize", "--az", AZ, "--instance-type", NEW, "--store", store,
         "--status", "local", "--standby-timeout", "1", "--json"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["failed_step"] == "replace_standby" and not report["ok"]
    assert [(s["name"], s["state"]) for s in report["steps"]] == [
        ("plan", "ok"), ("launch_template", "ok"), ("replace_standby", "failed"),
    ]  # fmt: skip
    assert "reports no state" in report["error"] and "leader was not touched" in report["error"]
    members = world.members()
    assert members[world.leader] == OLD and world.standby not in members  # the group replaced it
    assert sorted(members.values()) == sorted([OLD, NEW])
    now = {i["instance_id"]: i for i in report["az_now"]}
    assert now[world.leader]["leader"] is True


def test_steps_are_printed_as_they_end(moto_endpoint: str, tmp_path: Path, operator: None) -> None:
    world = _world(moto_endpoint)
    store = _store(tmp_path, world, moto_endpoint)
    result = CliRunner().invoke(
        main, ["aws", "resize", "--az", AZ, "--instance-type", OLD, "--store", store]
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[1:3] for line in lines] == [
        ["ok]", "plan"], ["ok]", "launch_template"], ["--]", "replace_standby"],
        ["--]", "handover"], ["--]", "replace_leader"], ["ok]", "verify"],
    ]  # fmt: skip


def test_an_az_outside_the_document_is_refused(
    moto_endpoint: str, tmp_path: Path, operator: None
) -> None:
    world = _world(moto_endpoint)
    store = _store(tmp_path, world, moto_endpoint)
    result = CliRunner().invoke(
        main, ["aws", "resize", "--az", "eu-west-1z", "--instance-type", NEW, "--store", store]
    )
    assert result.exit_code == 2
    assert f"'eu-west-1z' is not in aws.zones (accepted: {AZ})" in result.output
    assert len(_versions(world)) == 1 and world.holder() == world.leader
