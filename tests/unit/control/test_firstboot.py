"""The first-boot helper (control/firstboot.py) against the fake IMDS, a real SQLite
store and, for the admin-token parameter, SSM on the moto server."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from control.api.auth import authenticate
from control.aws.imds import Imds, InstanceIdentity
from control.config import ConfigDocument
from control.firstboot import ONE_ARM_NOTE, FirstBoot, FirstBootError
from control.store import ConfigStore, SqliteStore, VersionConflict
from control.userdata import UserData, UserDataError
from perf.lab.imds import FakeEni, FakeImds, FakeInstance
from tests.unit.control.conftest import minimal, ssm_client

MAC = "0e:00:00:00:00:01"


def instance(user_data: str | None) -> FakeInstance:
    return FakeInstance(
        availability_zone="eu-west-1b",
        interfaces=[FakeEni(MAC, "eni-primary", 0, ["10.0.0.10"])],
        user_data=user_data,
    )


class Machine:
    """The files a first boot touches, under a temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sys_net = root / "sys-class-net"
        for name, mac in (("lo", "00:00:00:00:00:00"), ("ens5", MAC.upper())):
            (self.sys_net / name).mkdir(parents=True)
            (self.sys_net / name / "address").write_text(mac + "\n")
        self.console = root / "console"
        self.console.write_text("")
        self.env_file = root / "etc" / "agent.env"
        self.state_file = root / "state" / "firstboot.json"
        self.stores: list[str] = []
        self.ssm: Any = None

    def store(self, ud: UserData, _: InstanceIdentity) -> ConfigStore:
        self.stores.append(ud.store)
        return SqliteStore(self.root / "config.db")

    def ssm_client(self, ud: UserData, _: InstanceIdentity) -> Any:
        if self.ssm is None:
            raise LookupError("no operational_role in the user data")
        return self.ssm

    def boot(self, fake: FakeImds) -> Any:
        return FirstBoot(
            Imds(fake.url, attempts=1),
            self.store,
            self.ssm_client,
            env_file=self.env_file,
            state_file=self.state_file,
            console=self.console,
            sys_net=self.sys_net,
        ).run()

    def env(self) -> dict[str, str]:
        lines = self.env_file.read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))

    def token_on_console(self) -> str:
        lines = self.console.read_text().splitlines()
        return lines[lines.index("*** Cloud Spectra Gateway: admin token (shown once) ***") + 1]


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    return Machine(tmp_path)


def test_standalone_without_user_data(machine: Machine) -> None:
    with FakeImds(instance(None)) as fake:
        report = machine.boot(fake)
    assert (report.mode, report.interface, report.availability_zone) == (
        "standalone",
        "ens5",
        "eu-west-1b",
    )
    assert machine.env() == {
        "SPECTRA_INSTANCE": "spectra",
        "SPECTRA_STORE": "local",
        "SPECTRA_AGENT_ARGS": "",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    store = SqliteStore(machine.root / "config.db")
    version, doc = store.latest()
    assert version == report.document_written == 1
    assert (doc.interfaces.inside, doc.interfaces.outside, doc.interfaces.data_plane) == (
        "ens5",
        "ens5",
        "kernel",
    )
    assert doc.one_arm_nat
    token = machine.token_on_console()
    principal = authenticate(f"Bearer {token}", doc.api.tokens)
    assert principal is not None and principal.role == "admin"
    state = json.loads(machine.state_file.read_text())
    assert token not in machine.state_file.read_text()
    assert state["note"] == ONE_ARM_NOTE
    assert state["token"]["console"] is True
    assert state["token"]["ssm"].startswith("unreachable: ")
    assert "operational_role" in state["token"]["ssm"]


def test_a_second_boot_writes_no_document_and_no_token(machine: Machine) -> None:
    with FakeImds(instance(None)) as fake:
        machine.boot(fake)
        first = machine.console.read_text()
        report = machine.boot(fake)
    assert report.document_written is None and report.token == {}
    assert machine.console.read_text() == first  # shown once
    assert SqliteStore(machine.root / "config.db").head() == 1


def test_fleet_user_data_reaches_the_agent_and_the_document(machine: Machine) -> None:
    user_data = {
        "name": "prod",
        "mode": "fleet",
        "az": "eu-west-1c",
        "region": "eu-west-2",
        "lease_table": "prod-lease",
        "operational_role": {"name": "prod-cross-account-role1", "external_id": "ext-1"},
    }
    with FakeImds(instance(json.dumps(user_data))) as fake:
        report = machine.boot(fake)
    env = machine.env()
    assert shlex.split(env["SPECTRA_AGENT_ARGS"]) == ["--aws", "--az", "eu-west-1c"]
    assert (env["SPECTRA_INSTANCE"], env["AWS_DEFAULT_REGION"]) == ("prod", "eu-west-2")
    assert report.availability_zone == "eu-west-1c"
    doc = SqliteStore(machine.root / "config.db").latest()[1]
    assert doc.aws.region == "eu-west-2"
    assert doc.aws.lease.table == "prod-lease"
    assert doc.aws.operational_role is not None
    assert doc.aws.operational_role.name == "prod-cross-account-role1"


def test_bad_user_data_writes_nothing(machine: Machine) -> None:
    with FakeImds(instance('{"mode": "cluster"}')) as fake, pytest.raises(UserDataError):
        machine.boot(fake)
    assert not machine.env_file.exists()
    assert machine.stores == []  # the store was never opened
    assert machine.console.read_text() == ""


def test_no_interface_with_the_primary_mac(machine: Machine) -> None:
    (machine.sys_net / "ens5" / "address").write_text("0e:00:00:00:00:99\n")
    with FakeImds(instance(None)) as fake, pytest.raises(FirstBootError, match=MAC):
        machine.boot(fake)


def test_the_token_goes_to_ssm_once_and_is_never_overwritten(
    machine: Machine, moto_endpoint: str, tmp_path: Path
) -> None:
    machine.ssm = ssm_client(moto_endpoint)
    name = "/fb-test/prod/admin-token"
    user_data = json.dumps({"store": "ssm:/fb-test/prod"})
    with FakeImds(instance(user_data)) as fake:
        report = machine.boot(fake)
        token = machine.token_on_console()
        assert report.token["ssm"] == "written"
        assert report.token["ssm_parameter"] == name
        stored = machine.ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]
        assert (stored["Type"], stored["Value"]) == ("SecureString", token)
        # a new store (another deployment's first boot) with the same parameter name
        (machine.root / "config.db").unlink()
        second = machine.boot(fake)
    assert second.token["ssm"] == "exists"
    again = machine.ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]
    assert again["Value"] == token
    assert machine.stores == ["ssm:/fb-test/prod", "ssm:/fb-test/prod"]


class RacedStore(SqliteStore):
    """A store another instance writes the first document to between head() and put()."""

    def put(self, doc: ConfigDocument, expected_version: int, actor: str) -> int:
        raise VersionConflict(expected_version, 1)


def test_losing_the_first_document_race_shows_no_token(machine: Machine) -> None:
    def raced(ud: UserData, identity: InstanceIdentity) -> ConfigStore:
        return RacedStore(machine.root / "raced.db")

    with FakeImds(instance(None)) as fake:
        report = FirstBoot(
            Imds(fake.url, attempts=1),
            raced,
            machine.ssm_client,
            env_file=machine.env_file,
            state_file=machine.state_file,
            console=machine.console,
            sys_net=machine.sys_net,
        ).run()
    assert report.document_written is None and report.token == {}
    assert machine.console.read_text() == ""


def test_minimal_two_arm_documents_still_need_two_interfaces() -> None:
    from control.config import ConfigValidationError, parse_document

    same = minimal() | {"interfaces": {"inside": "eth0", "outside": "eth0"}}
    with pytest.raises(ConfigValidationError, match="data_plane kernel for one-arm NAT"):
        parse_document(same)


def test_the_az_override_is_the_zone_the_agent_acts_for() -> None:
    """``az`` in the user data -> ``spectra run --az`` -> the HA side's identity."""
    import threading

    from control.agent import Agent, AgentSettings
    from control.aws.ha import HaRunner

    with FakeImds(instance(None)) as fake:
        runner = HaRunner(Imds(fake.url), lambda: True, lambda: None, zone="eu-west-1c")
        identity = runner.identify(threading.Event())
        plain = HaRunner(Imds(fake.url), lambda: True, lambda: None).identify(threading.Event())
    assert identity is not None and identity.availability_zone == "eu-west-1c"
    assert plain is not None and plain.availability_zone == "eu-west-1b"
    assert identity.instance_id == plain.instance_id
    settings = AgentSettings(instance="t", availability_zone="eu-west-1c")
    assert Agent(settings, SqliteStore(":memory:")).host.zone() == "eu-west-1c"


def test_the_cli_refuses_bad_user_data_naming_the_field() -> None:
    from click.testing import CliRunner

    from control.cli import main

    with FakeImds(instance('{"mode": "standalone", "zone": "x"}')) as fake:
        result = CliRunner().invoke(main, ["firstboot", "--imds-endpoint", fake.url])
    assert result.exit_code == 1
    assert "unknown key(s) ['zone']" in result.output
    assert "accepted ['name', 'store', 'region', 'az'" in result.output
