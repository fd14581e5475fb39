"""ha.conntrack_sync: the schema names bad fields, render picks this instance's side of
the pair and what not to replicate, and the conntrackd.conf text says it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from control import conntrackd
from control.config import ConfigValidationError, parse_document
from control.conntrackd import DaemonPaths, SyncSettings, cache_sizes, render_config
from control.steps import AnyHost, ConvergeError, RenderError, StepContext, dry_run
from control.steps.conntrack_sync import ConntrackSyncStep

ADDRESSES = {
    "inside": ["10.0.1.10"],
    "outside": ["10.0.2.10", "10.0.2.99"],  # 10.0.2.99: the NAT address, here for now
    "sync": ["169.254.77.2"],
}
MEMBERS = ["169.254.77.1", "169.254.77.2"]


class FakeHost:
    def __init__(self, **addresses: list[str]) -> None:
        self.table = {**ADDRESSES, **addresses}

    def addresses(self, ifname: str) -> list[str]:
        return [n.partition("/")[0] for n in self.networks(ifname)]

    def networks(self, ifname: str) -> list[str]:
        if ifname not in self.table:
            raise ConvergeError(f"interfaces: {ifname!r} does not exist")
        return [a if "/" in a else f"{a}/24" for a in self.table[ifname]]

    def zone(self) -> str | None:
        return None


def document(**sync: Any) -> dict[str, Any]:
    return {
        "interfaces": {"inside": "inside", "outside": "outside"},
        "nat": {"outside_addresses": ["10.0.2.99"]},
        "ha": {
            "conntrack_sync": {"enabled": True, "interface": "sync", "members": MEMBERS, **sync}
        },
    }


def errors(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigValidationError) as caught:
        parse_document(data)
    return {e["path"]: e["message"] for e in caught.value.errors}


def test_disabled_by_default_and_renders_nothing() -> None:
    doc = parse_document({"interfaces": {"inside": "inside", "outside": "outside"}})
    assert doc.ha.conntrack_sync.enabled is False
    assert ConntrackSyncStep.render(doc, FakeHost()) is None


@pytest.mark.parametrize(
    ("sync", "path", "message"),
    [
        ({"members": []}, "ha.conntrack_sync.members", "expected at least 2 IPv4 addresses"),
        ({"members": ["169.254.77.1"]}, "ha.conntrack_sync.members", "at least 2"),
        (
            {"members": [f"169.254.77.{i}" for i in range(65)]},
            "ha.conntrack_sync.members",
            "at most 64",
        ),
        ({"members": ["169.254.77.1"] * 2}, "ha.conntrack_sync.members[1]", "other than"),
        ({"members": ["169.254.77.1", "peer"]}, "ha.conntrack_sync.members[1]", "IPv4 address"),
        ({"port": 0}, "ha.conntrack_sync.port", "greater than or equal to 1"),
        ({"interface": "a bad name"}, "ha.conntrack_sync.interface", "Linux interface name"),
        ({"peer": "169.254.77.1"}, "ha.conntrack_sync.peer", "accepted fields here: enabled"),
    ],
)
def test_bad_input_names_the_field_and_what_is_accepted(
    sync: dict[str, Any], path: str, message: str
) -> None:
    found = errors(document(**sync))
    assert path in found, found
    assert message in found[path]


def test_render_takes_the_member_on_the_sync_link_and_sends_to_the_other() -> None:
    settings = ConntrackSyncStep.render(parse_document(document()), FakeHost())
    assert settings is not None
    assert (settings.interface, settings.local, settings.peer, settings.port) == (
        "sync",
        "169.254.77.2",
        "169.254.77.1",
        3780,
    )
    other = ConntrackSyncStep.render(parse_document(document()), FakeHost(sync=["169.254.77.1"]))
    assert other is not None and (other.local, other.peer) == ("169.254.77.1", "169.254.77.2")


def test_render_ignores_the_gateways_own_addresses_but_not_the_moving_nat_address() -> None:
    settings = ConntrackSyncStep.render(parse_document(document()), FakeHost())
    assert settings is not None
    assert settings.ignore == (
        "127.0.0.0/8",
        "169.254.77.1",
        "169.254.77.2",
        "10.0.1.10",
        "10.0.2.10",
    )


def test_sync_interface_defaults_to_the_inside_one() -> None:
    host = FakeHost(inside=["10.0.1.10", "169.254.77.1"])
    settings = ConntrackSyncStep.render(parse_document(document(interface=None)), host)
    assert settings is not None and (settings.interface, settings.local) == (
        "inside",
        "169.254.77.1",
    )


def test_an_instance_without_a_member_address_is_not_synced() -> None:
    assert ConntrackSyncStep.render(parse_document(document()), FakeHost(sync=[])) is None


def test_render_rejects_a_host_with_both_members() -> None:
    with pytest.raises(RenderError) as caught:
        ConntrackSyncStep.render(parse_document(document()), FakeHost(sync=MEMBERS))
    assert caught.value.path == "ha.conntrack_sync.members"
    assert "expected one of 169.254.77.1, 169.254.77.2" in caught.value.message


def test_each_instance_pairs_with_the_member_in_its_own_subnet() -> None:
    members = ["10.0.1.11", "10.0.1.12", "10.0.2.11", "10.0.2.12"]
    doc = parse_document(document(members=members))
    for mine, peer in (("10.0.1.12", "10.0.1.11"), ("10.0.2.11", "10.0.2.12")):
        settings = ConntrackSyncStep.render(doc, FakeHost(sync=[f"{mine}/24"]))
        assert settings is not None and (settings.local, settings.peer) == (mine, peer)
    alone = parse_document(document(members=[*members, "10.0.3.11"]))
    assert ConntrackSyncStep.render(alone, FakeHost(sync=["10.0.3.11/24"])) is None
    three = parse_document(document(members=[*members, "10.0.1.13"]))
    with pytest.raises(RenderError, match=r"exactly one other member in 10\.0\.1\.0/24"):
        ConntrackSyncStep.render(three, FakeHost(sync=["10.0.1.13/24"]))


def test_config_api_dry_run_renders_without_a_sync_link() -> None:
    plan = dry_run(parse_document(document()), ("192.0.2.1",))
    assert plan.parts["conntrack_sync"].local == "169.254.77.1"
    assert ConntrackSyncStep.render(parse_document(document()), AnyHost(("192.0.2.1",)))


def test_config_text_is_ftfw_over_unicast_udp_with_per_instance_paths(tmp_path: Path) -> None:
    paths = DaemonPaths.under(tmp_path / "run", tmp_path / "log")
    settings = SyncSettings(
        "sync", "169.254.77.2", "169.254.77.1", 3790, ("127.0.0.0/8", "10.0.1.10")
    )
    text = render_config(settings, paths)
    assert text.count("{") == text.count("}")
    lines = [line.strip() for line in text.splitlines()]
    for expected in (
        "Mode FTFW {",
        "IPv4_address 169.254.77.2",
        "IPv4_Destination_Address 169.254.77.1",
        "Port 3790",
        "Interface sync",
        "Checksum on",
        "TCPWindowTracking no",
        "StartupResync yes",
        f"LockFile {tmp_path}/run/conntrackd.lock",
        f"Path {tmp_path}/run/conntrackd.ctl",
        f"LogFile {tmp_path}/log/conntrackd.log",
        "Filter From Kernelspace {",
        "IPv4_address 127.0.0.0/8",
        "IPv4_address 10.0.1.10",
        "ESTABLISHED CLOSED TIME_WAIT CLOSE_WAIT for TCP",
    ):
        assert expected in lines, expected
    protocols = lines[lines.index("Protocol Accept {") + 1 : lines.index("Address Ignore {") - 1]
    assert protocols == ["TCP", "UDP", "ICMP"]
    assert "Multicast" not in text


def test_cache_sizes_from_the_daemons_statistics() -> None:
    stats = (
        "cache internal:\ncurrent active connections:\t           2\n"
        "connections created:\t\t           3\tfailed:\t           0\n\n"
        "cache external:\ncurrent active connections:\t          17\n"
    )
    assert cache_sizes(stats) == {"internal": 2, "external": 17}
    assert cache_sizes("can't connect: is conntrackd running?") == {}


def test_apply_refuses_without_conntrackd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    step = ConntrackSyncStep(StepContext("t", tmp_path, tmp_path))
    settings = ConntrackSyncStep.render(parse_document(document()), FakeHost())
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConvergeError, match=r"ha.conntrack_sync.enabled: conntrackd is not"):
        step.apply(settings)
    assert not (tmp_path / "conntrackd.conf").exists()


def test_apply_refuses_a_socket_path_too_long_for_unix(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * (conntrackd.SUN_PATH_MAX - len(str(tmp_path))))
    step = ConntrackSyncStep(StepContext("t", deep, tmp_path))
    settings = ConntrackSyncStep.render(parse_document(document()), FakeHost())
    with pytest.raises(ConvergeError, match="longer than a UNIX socket path"):
        step.apply(settings)


def test_disabled_status_and_role_api_report_nothing_to_do(tmp_path: Path) -> None:
    step = ConntrackSyncStep(StepContext("t", tmp_path, tmp_path))
    step.apply(None)
    assert step.tick() == {"enabled": False}
    leader = step.become_leader()
    assert not leader.ok and leader.error == "ha.conntrack_sync is disabled"
    assert leader.commands == ()
