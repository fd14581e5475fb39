"""``spectra aws resize`` end to end against a moto server: the document gives the AWS
side, the Auto Scaling group replaces the standby, and no gateway ever reports it as a
standby (no agent runs), so the resize stops at ``replace_standby`` with exit status 1,
the leader untouched, and says so (``--json``); bad input is refused before anything is
changed. With ``tls.appliance`` the gateways' status is read over HTTPS on the
appliance's port with the certificate verified; one that does not verify stops the
resize at ``plan``, before anything changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import control.cli_resize
from control.cli import main
from control.config import parse_document
from control.store import SqliteStore
from tests.certs import make_cert
from tests.unit.control.aws.conftest import REGION
from tests.unit.control.aws.test_gateway_status import serve
from tests.unit.control.aws.test_resize import AZ, NEW, OLD, ROLE, World, _versions, _world

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


def _store(tmp_path: Path, world: World, endpoint: str, tls: dict[str, Any] | None = None) -> str:
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
    if tls is not None:
        doc["tls"] = tls
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


def _appliance(port: int, cert: tuple[str, str]) -> dict[str, Any]:
    appliance = {"port": port, "certificate_file": cert[0], "private_key_file": cert[1]}
    return {"enabled": True, "appliance": appliance}


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every instance's config API is the test's server on loopback (moto's instances
    have private addresses nothing answers on)."""
    asked: list[str] = []

    def address(_sessions: Any, instance_id: str) -> str:
        asked.append(instance_id)
        return "127.0.0.1"

    monkeypatch.setattr(control.cli_resize, "private_address", address)
    return asked


def test_with_tls_appliance_the_status_is_read_over_https_verified_by_the_document(
    moto_endpoint: str, tmp_path: Path, operator: None, loopback: list[str]
) -> None:
    world = _world(moto_endpoint)
    cert = make_cert(tmp_path, "gw.spectra.test")
    leader = {"gw": {"aws": {"instance_id": world.leader, "role": "leader"}}}
    with serve(leader, cert) as (port, seen):
        store = _store(tmp_path, world, moto_endpoint, _appliance(port, cert))
        result = CliRunner().invoke(
            main,
            ["aws", "resize", "--az", AZ, "--instance-type", NEW, "--store", store,
             "--token", "spk_operator", "--tls-server-name", "gw.spectra.test",
             "--standby-timeout", "1", "--json"],
        )  # fmt: skip
    report = json.loads(result.stdout)
    # the leader answered over HTTPS; its replacement never does: stopped before the leader
    assert report["failed_step"] == "replace_standby", report["error"]
    assert loopback[0] == world.leader and seen[0] == "Bearer spk_operator"
    assert len(_versions(world)) == 2


@pytest.mark.parametrize("name", [None, "gw.spectra.test"])
def test_a_certificate_the_document_does_not_hold_stops_at_plan(
    moto_endpoint: str, tmp_path: Path, operator: None, loopback: list[str], name: str | None
) -> None:
    """The server's certificate is not the document's (``name`` given), or is but is
    checked for the instance's address it does not hold (``None``)."""
    world = _world(moto_endpoint)
    served = make_cert(tmp_path, "gw.spectra.test")
    documented = served if name is None else make_cert(tmp_path, "impostor.spectra.test")
    leader = {"gw": {"aws": {"instance_id": world.leader, "role": "leader"}}}
    argv = ["aws", "resize", "--az", AZ, "--instance-type", NEW, "--json"]
    argv += [] if name is None else ["--tls-server-name", name]
    with serve(leader, served) as (port, seen):
        store = _store(tmp_path, world, moto_endpoint, _appliance(port, documented))
        result = CliRunner().invoke(main, [*argv, "--store", store, "--token", "spk_operator"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["failed_step"] == "plan" and "nothing was changed" in report["error"]
    assert "the certificate does not verify" in report["error"]
    assert f"tls.appliance.certificate_file {documented[0]}" in report["error"]
    assert seen == [] and len(_versions(world)) == 1 and world.holder() == world.leader


def test_tls_options_without_tls_appliance_are_refused(
    moto_endpoint: str, tmp_path: Path, operator: None
) -> None:
    world = _world(moto_endpoint)
    store = _store(tmp_path, world, moto_endpoint)
    bundle = make_cert(tmp_path, "gw.spectra.test")[0]
    base = ["aws", "resize", "--az", AZ, "--instance-type", NEW, "--store", store]
    for extra, named in (
        (["--ca-bundle", bundle], "--ca-bundle"),
        (["--tls-server-name", "gw.spectra.test"], "--tls-server-name"),
        (["--status", "local", "--ca-bundle", bundle], "--ca-bundle"),
    ):
        result = CliRunner().invoke(main, [*base, *extra])
        assert result.exit_code == 2, result.output
        assert f"Invalid value for {named}" in result.output
    assert len(_versions(world)) == 1


def test_a_ca_bundle_that_is_no_certificate_is_refused(
    moto_endpoint: str, tmp_path: Path, operator: None
) -> None:
    world = _world(moto_endpoint)
    cert = make_cert(tmp_path, "gw.spectra.test")
    store = _store(tmp_path, world, moto_endpoint, _appliance(8443, cert))
    (tmp_path / "bundle.pem").write_text("not a certificate\n")
    result = CliRunner().invoke(
        main,
        ["aws", "resize", "--az", AZ, "--instance-type", NEW, "--store", store,
         "--ca-bundle", str(tmp_path / "bundle.pem")],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "Invalid value for --ca-bundle" in result.output
    assert "no PEM certificate could be read" in result.output
    assert len(_versions(world)) == 1
