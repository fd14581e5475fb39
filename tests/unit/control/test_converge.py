"""Converging is all or nothing: a failing step rolls every step back to the last good
document; the agent reports failures, retries, and survives an unreachable store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from control.agent import Agent, AgentSettings
from control.config import ConfigDocument, parse_document
from control.steps import STEPS, ConvergeError, Converger, StepBase, StepContext, render
from control.store import SqliteStore, StoreError

ADDRESSES = {"inside": ["10.0.1.1"], "outside": ["203.0.113.2"]}


class FakeHost:
    def addresses(self, ifname: str) -> list[str]:
        if ifname not in ADDRESSES:
            raise ConvergeError(f"interfaces: {ifname!r} does not exist")
        return ADDRESSES[ifname]

    def zone(self) -> str | None:
        return None


def doc(**interfaces: Any) -> ConfigDocument:
    return parse_document({"interfaces": {"inside": "inside", "outside": "outside", **interfaces}})


class Recorder(StepBase):
    def __init__(self, name: str, log: list[tuple[str, str]], fail_on: str | None = None) -> None:
        super().__init__(StepContext("t", Path("/nonexistent"), Path("/nonexistent")))
        self.name, self.log, self.fail_on = name, log, fail_on

    @staticmethod
    def render(doc: ConfigDocument, host: object) -> str:
        return doc.interfaces.xdp_mode

    def apply(self, mode: str) -> None:
        if mode == self.fail_on:
            raise OSError(f"{self.name} cannot apply {mode}")
        self.log.append((self.name, mode))


def test_failing_step_rolls_every_step_back_to_last_good() -> None:
    log: list[tuple[str, str]] = []
    steps = [Recorder("nft", log), Recorder("xdp", log, fail_on="generic")]
    conv = Converger(steps, FakeHost())
    conv.converge(doc(xdp_mode="native"))
    log.clear()
    with pytest.raises(ConvergeError, match="xdp: xdp cannot apply generic"):
        conv.converge(doc(xdp_mode="generic"))
    assert log == [("nft", "generic"), ("nft", "native"), ("xdp", "native")]
    assert conv.last_good is not None and conv.last_good.doc.interfaces.xdp_mode == "native"


def test_render_fails_before_any_step_runs() -> None:
    log: list[tuple[str, str]] = []
    conv = Converger([Recorder("nft", log)], FakeHost())
    with pytest.raises(ConvergeError, match="'eth9' does not exist"):
        conv.converge(doc(outside="eth9"))
    assert log == []


def test_plan_carries_ruleset_deny_list_and_timeouts() -> None:
    d = parse_document(
        {
            "interfaces": {"inside": "inside", "outside": "outside"},
            "rules": {"entries": [{"action": "deny", "dst": "198.51.100.7/32", "proto": "udp"}]},
            "nat": {"timeouts": {"udp": 17}},
        }
    )
    plan = render(d, STEPS, FakeHost())
    assert "table inet spectra" in plan.parts["nftables"]
    assert plan.outside_addresses == ("203.0.113.2",)
    assert [str(r.dst) for r in plan.parts["xdp"].deny_rules] == ["198.51.100.7/32"]
    assert ("net/netfilter/nf_conntrack_udp_timeout", "17") in plan.parts["sysctl"].sysctls
    assert plan.parts["inspection"].policy.enabled is False
    assert plan.parts["gwlb"] is None


class BrokenStore(SqliteStore):
    def head(self) -> int:
        raise StoreError("store unreachable")


def agent(
    tmp_path: Path, store: SqliteStore, log: list[tuple[str, str]], fail_on: str | None
) -> Agent:
    a = Agent(AgentSettings(instance="t", poll_seconds=0.01), store)
    a.converger = Converger([Recorder("nft", log, fail_on)], FakeHost())
    return a


def test_agent_applies_new_versions_and_reports_failures(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "c.db")
    log: list[tuple[str, str]] = []
    a = agent(tmp_path, store, log, fail_on="generic")
    try:
        a.poll_once()
        assert "empty" in (a.state.last_error or "")
        store.put(doc(xdp_mode="native"), 0, "t")
        a.poll_once()
        assert (a.state.applied_version, a.state.converged) == (1, True)
        store.put(doc(xdp_mode="generic"), 1, "t")
        a.poll_once()
        assert a.state.applied_version == 1 and not a.state.converged
        assert a.state.desired_version == 2
        assert a.state.last_error is not None and a.state.last_error.startswith("version 2:")
        a.poll_once()  # within backoff: not retried
        assert log.count(("nft", "native")) == 2  # applied once, rolled back to once
    finally:
        store.close()


def test_agent_keeps_last_good_when_store_unreachable(tmp_path: Path) -> None:
    good = SqliteStore(tmp_path / "c.db")
    good.put(doc(), 0, "t")
    good.close()
    broken = BrokenStore(tmp_path / "c.db")
    log: list[tuple[str, str]] = []
    a = agent(tmp_path, broken, log, fail_on=None)
    try:
        a.poll_once()
        assert a.state.store_error == "store unreachable"
        assert log == []
    finally:
        broken.close()


class FlakyStore(SqliteStore):
    """Answers ``head`` and fails ``get`` while ``down`` (unreachable between the two)."""

    down = False

    def get(self, version: int) -> ConfigDocument:
        if self.down:
            raise StoreError("store unreachable")
        return super().get(version)


def test_a_store_that_fails_between_head_and_get_is_no_failed_version(tmp_path: Path) -> None:
    store = FlakyStore(tmp_path / "c.db")
    log: list[tuple[str, str]] = []
    a = agent(tmp_path, store, log, fail_on=None)
    try:
        store.put(doc(xdp_mode="native"), 0, "t")
        a.poll_once()
        store.put(doc(xdp_mode="generic"), 1, "t")
        store.down = True
        a.poll_once()
        # still running version 1, converged; the error is the store's, not version 2's
        assert (a.state.applied_version, a.state.converged) == (1, True)
        assert a.state.store_error == "store unreachable" and a.state.last_error is None
        store.down = False
        a.poll_once()  # no backoff: the store is back, version 2 applies at once
        assert (a.state.applied_version, a.state.converged) == (2, True)
        assert log == [("nft", "native"), ("nft", "generic")]
    finally:
        store.close()


def test_a_locked_sqlite_store_is_a_store_error(tmp_path: Path) -> None:
    """A database SQLite cannot read (here: a closed connection) raises StoreError, which
    the agent survives, not sqlite3's own error, which would end the agent."""
    store = SqliteStore(tmp_path / "c.db")
    store.put(doc(), 0, "t")
    store.close()
    with pytest.raises(StoreError, match=r"c\.db"):
        store.head()
    a = agent(tmp_path, store, [], fail_on=None)
    a.poll_once()
    assert a.state.store_error is not None and "c.db" in a.state.store_error


class FakeRunner:
    """The agent's AWS side, recording the documents it is configured with."""

    def __init__(self) -> None:
        self.configured: list[ConfigDocument] = []

    def identify(self, stop: object) -> None:
        return None

    def configure(self, doc: ConfigDocument) -> None:
        self.configured.append(doc)


def test_a_restart_with_the_store_away_runs_ha_from_the_last_applied_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("control.agent.RUN_ROOT", tmp_path / "run")
    store = FlakyStore(tmp_path / "c.db")
    first = agent(tmp_path, store, [], fail_on=None)
    first.aws = FakeRunner()  # type: ignore[assignment]
    store.put(doc(xdp_mode="native"), 0, "t")
    first.poll_once()
    remembered = tmp_path / "run" / "t" / "last-good.json"
    assert remembered.stat().st_mode & 0o777 == 0o600
    store.down = True  # the agent restarts while the store cannot be read
    second = agent(tmp_path, store, [], fail_on=None)
    second.aws = runner = FakeRunner()  # type: ignore[assignment]
    second._start_aws()
    assert [d.interfaces.xdp_mode for d in runner.configured] == ["native"]
    second.poll_once()
    assert second.state.store_error == "store unreachable"
    remembered.unlink()  # nothing remembered: the HA side waits for the store
    third = agent(tmp_path, store, [], fail_on=None)
    third.aws = runner = FakeRunner()  # type: ignore[assignment]
    third._start_aws()
    assert runner.configured == []
    store.close()


def test_sysctls_of_a_one_arm_nat_turn_redirects_off() -> None:
    from control.config import parse_document
    from control.steps.base import KernelHost
    from control.steps.sysctl import SysctlStep

    one_arm = {"interfaces": {"inside": "ens5", "outside": "ens5", "data_plane": "kernel"}}
    two_arm = {"interfaces": {"inside": "in0", "outside": "out0"}}
    rendered = dict(SysctlStep.render(parse_document(one_arm), KernelHost()).sysctls)
    assert rendered["net/ipv4/conf/all/send_redirects"] == "0"
    assert rendered["net/ipv4/conf/ens5/send_redirects"] == "0"
    assert rendered["net/ipv4/ip_forward"] == "1"
    assert not any(
        "redirects" in k
        for k in dict(SysctlStep.render(parse_document(two_arm), KernelHost()).sysctls)
    )
