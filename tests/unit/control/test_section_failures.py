"""One section failing at apply time is reported with its field and the rest of the
document converges: the AI gateway without its key secret, a renderer's bug; the agent
never exits because of one section."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.agent import Agent, AgentSettings
from control.cli import _servers
from control.config import ConfigDocument, parse_document
from control.servers import ServerThread
from control.steps import Converger
from control.store import SqliteStore, open_store
from tests.unit.ai.conftest import config_dict
from tests.unit.control.test_converge import FakeHost, Recorder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _NoFakes:
    def url(self, name: str) -> str:
        return f"http://127.0.0.1:9/{name}"  # never called: no request reaches a provider


def test_ai_gateway_without_its_secret_is_reported_and_the_api_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPECTRA_AI_KEY_SECRET", raising=False)
    api_port, ai_port = _free_port(), _free_port()
    ai = config_dict(_NoFakes(), tmp_path, listen_port=ai_port)  # type: ignore[arg-type]
    ai.pop("key_secret", None)  # the default: SPECTRA_AI_KEY_SECRET
    url = f"local:{tmp_path / 'config.db'}"
    store = open_store(url)
    document = {
        "interfaces": {"inside": "inside", "outside": "outside"},
        "api": {"host": "127.0.0.1", "port": api_port},
        "ai": ai,
    }
    store.put(parse_document(document), 0, "test")
    thread = ServerThread(_servers(url, store, None, lambda: None))
    thread.start()  # does not raise: the AI gateway is one section
    try:
        assert list(thread.failures) == ["ai.key_secret"]
        assert "SPECTRA_AI_KEY_SECRET is not set" in thread.failures["ai.key_secret"]
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/healthz", timeout=5) as r:
            assert r.status == 200
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", ai_port), timeout=1).close()
    finally:
        thread.stop()
        store.close()


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SqliteStore]:
    monkeypatch.setattr("control.agent.RUN_ROOT", tmp_path / "run")
    opened = SqliteStore(tmp_path / "c.db")
    yield opened
    opened.close()


def _agent(store: SqliteStore, step: Recorder) -> Agent:
    agent = Agent(AgentSettings(instance="t", poll_seconds=0.01), store)
    agent.converger = Converger([step], FakeHost())
    return agent


INTERFACES = {"inside": "inside", "outside": "outside"}


class _BrokenRender(Recorder):
    @staticmethod
    def render(doc: ConfigDocument, host: object) -> str:
        raise KeyError("a renderer's bug")


def test_the_agent_survives_any_failure_of_a_version(
    tmp_path: Path, store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = _agent(store, _BrokenRender("nft", []))
    store.put(parse_document({"interfaces": INTERFACES}), 0, "t")
    agent.cycle()  # does not raise
    assert not agent.state.converged
    assert agent.state.last_error == 'version 1: KeyError: "a renderer\'s bug"'
    agent.converger = Converger([Recorder("nft", [])], FakeHost())

    def broken_tick() -> None:
        raise RuntimeError("tick bug")

    monkeypatch.setattr(agent, "tick", broken_tick)
    agent.cycle()
    assert agent.state.last_error == "tick: RuntimeError: tick bug"
    assert (tmp_path / "run/t/status.json").exists()  # the state is still written


def test_cloudwatch_without_aws_is_reported_and_the_rest_converges(store: SqliteStore) -> None:
    agent = _agent(store, Recorder("nft", []))
    store.put(parse_document({"interfaces": INTERFACES, "metrics": {"cloudwatch": True}}), 0, "t")
    agent.cycle()
    assert agent.state.converged and agent.state.applied_version == 1
    assert "spectra run --aws" in agent.state.section_errors["metrics.cloudwatch"]
    assert agent.state.cloudwatch["enabled"] is False
    store.put(parse_document({"interfaces": INTERFACES}), 1, "t")
    agent.cycle()
    assert agent.state.section_errors == {}


def test_spectra_status_names_the_field_not_in_effect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import os

    from click.testing import CliRunner

    from control.cli import main

    monkeypatch.setattr("control.agent.RUN_ROOT", tmp_path / "run")
    monkeypatch.setattr("control.status.RUN_ROOT", tmp_path / "run")
    (tmp_path / "run/gw-z").mkdir(parents=True)
    state = {"pid": os.getpid(), "applied_version": 1, "converged": True, "data_plane": "kernel",
             "outside_addresses": [], "xdp_modes": {},
             "section_errors": {"ai.key_secret": "environment variable X is not set"}}  # fmt: skip
    (tmp_path / "run/gw-z/status.json").write_text(json.dumps(state))
    result = CliRunner().invoke(main, ["status", "--instance", "gw-z"])
    assert result.exit_code == 0, result.output
    assert "not in effect: ai.key_secret: environment variable X is not set" in result.output


def test_proxy_access_log_shipping_without_aws_is_reported(store: SqliteStore) -> None:
    agent = _agent(store, Recorder("nft", []))
    proxy = {"enabled": True, "access_log": {"cloudwatch_log_group": "/spectra/proxy"}}
    store.put(parse_document({"interfaces": INTERFACES, "proxy": proxy}), 0, "t")
    agent.cycle()
    assert agent.state.applied_version == 1
    error = agent.state.section_errors["proxy.access_log.cloudwatch_log_group"]
    assert "spectra run --aws" in error
    store.put(parse_document({"interfaces": INTERFACES}), 1, "t")
    agent.cycle()
    assert "proxy.access_log.cloudwatch_log_group" not in agent.state.section_errors
