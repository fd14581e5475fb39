"""Fixtures for the inspection path in cs-gw-a: the kernel NAT baseline, the product's
inspection chain, either engine as a process (the built-in one, or the real Suricata
under the product's supervisor), and helper servers in cs-inet. Everything started here
is stopped, and every rule removed, at teardown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from control.config import parse_document
from control.steps.nftables import render_nftables
from nfq import netfilter
from nfq.policy import InspectionPolicy
from nfq.suricata import Supervisor, SuricataPaths, write_config
from perf.lab import ns_exec
from tests.netns.helpers import reset_gateway, sh, wait_for

GW = "cs-gw-a"
WS = "cs-ws-a"
INET = "cs-inet"
ROOT = str(Path(__file__).resolve().parents[3])


@dataclass
class Engine:
    """``python -m nfq engine`` running in the gateway namespace."""

    workdir: Path
    policy: InspectionPolicy
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.workdir / "engine.log"

    @property
    def eve(self) -> Path:
        return self.workdir / "eve.json"

    def stats(self, queue: int = 0) -> dict[str, Any]:
        path = self.workdir / f"stats.q{queue}.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data

    def start(self) -> Engine:
        (self.workdir / "policy.json").write_text(self.policy.model_dump_json())
        for q in self.policy.queues.numbers:
            (self.workdir / f"stats.q{q}.json").unlink(missing_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ns_exec(GW, sys.executable, "-m", "nfq", "-v", "engine",
                        "--policy", str(self.workdir / "policy.json"),
                        "--eve", str(self.eve), "--stats", str(self.workdir / "stats.json"),
                        *self.extra),
                stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                env={**os.environ, "PYTHONPATH": ROOT},
            )  # fmt: skip
        wait_for(
            lambda: (
                all(self.stats(q) for q in self.policy.queues.numbers)
                or self.proc is None
                or self.proc.poll() is not None
            ),
            20,
            "engine bind",
        )
        assert self.proc.poll() is None, f"engine exited: {self.log.read_text()[-2000:]}"
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def alerts(self) -> list[dict[str, Any]]:
        if not self.eve.exists():
            return []
        records = [json.loads(line) for line in self.eve.read_text().splitlines() if line]
        return [r for r in records if r.get("event_type", "alert") == "alert"]

    def alert_sids(self) -> dict[int, str]:
        return {a["alert"]["signature_id"]: a["alert"]["action"] for a in self.alerts()}

    def packets(self) -> int:
        return int(self.stats().get("counters", {}).get("packets", 0))

    def rules_loaded(self) -> int:
        return int(self.stats().get("rules", 0))

    def reload(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGHUP)


@dataclass
class SuricataRun(Engine):
    """The real Suricata in cs-gw-a, rendered and supervised by ``nfq.suricata``."""

    sup: Supervisor | None = None

    @property
    def paths(self) -> SuricataPaths:
        return SuricataPaths.under(self.workdir / "suricata")

    @property
    def eve(self) -> Path:
        return self.paths.eve

    def start(self) -> Engine:
        write_config(self.policy, self.paths)
        self.sup = Supervisor(self.paths, tuple(self.policy.queues.numbers), netns=GW,
                              health_interval=0.0)  # fmt: skip
        self.sup.start(wait=60)
        return self

    def kill(self) -> None:
        if self.sup is not None and self.sup.pid is not None:
            pid = self.sup.pid
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not self.sup or not self.sup.alive(), 10, "suricata gone")

    def stop(self) -> None:
        if self.sup is not None:
            self.sup.stop()

    def _fresh(self) -> Supervisor:
        assert self.sup is not None
        self.sup.tick()  # health_interval 0: every tick reads the counters
        return self.sup

    def packets(self) -> int:
        return self._fresh().packets.get("packets", 0)

    def rules_loaded(self) -> int:
        return self._fresh().ruleset.get("rules_loaded", 0)

    def reload(self) -> None:
        """As the agent reloads: the rule files rendered again, then ``reload-rules``."""
        assert self.sup is not None
        write_config(self.policy, self.paths)
        self.sup.reload_rules()

    def pid(self) -> int | None:
        return self.sup.pid if self.sup is not None else None


@pytest.fixture
def nat_gateway(lab: Any) -> Iterator[dict[str, Any]]:
    """cs-gw-a with the kernel NAT baseline (inet spectra), no XDP, empty conntrack."""
    had_table = sh(GW, "nft", "list", "table", "inet", "spectra").returncode == 0
    reset_gateway(GW)
    baseline = parse_document({"interfaces": {"inside": "inside", "outside": "outside"}})
    text = render_nftables(baseline, ["203.0.113.2"])
    proc = subprocess.run(ns_exec(GW, "nft", "-f", "-"), input=text, text=True,
                          capture_output=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    yield lab.status()
    netfilter.remove(netns=GW)
    if not had_table:
        sh(GW, "nft", "delete", "table", "inet", "spectra")
    sh(GW, "conntrack", "-F")


@pytest.fixture
def inspect(nat_gateway: dict[str, Any], tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    """``inspect(policy, start=True)``: apply the policy's chain and start the engine."""
    engines: list[Engine] = []

    def make(
        policy: InspectionPolicy, *, start: bool = True, extra: tuple[str, ...] = ()
    ) -> Engine:
        netfilter.apply(policy, in_interface="inside", netns=GW)
        engine = Engine(tmp_path, policy, extra)
        engines.append(engine)
        return engine.start() if start else engine

    yield make
    for e in engines:
        e.stop()
    netfilter.remove(netns=GW)


@pytest.fixture(params=["builtin", "suricata"])
def inspect_any(
    request: pytest.FixtureRequest, nat_gateway: dict[str, Any], tmp_path: Path
) -> Iterator[Callable[..., Engine]]:
    """``inspect_any(policy)``: like ``inspect``, once with each engine."""
    engines: list[Engine] = []
    kind = SuricataRun if request.param == "suricata" else Engine

    def make(policy: InspectionPolicy) -> Engine:
        netfilter.apply(policy, in_interface="inside", netns=GW)
        engine = kind(tmp_path, policy)
        engines.append(engine)
        return engine.start()

    yield make
    for e in engines:
        e.stop()
    netfilter.remove(netns=GW)


@pytest.fixture
def inet_server(lab: Any) -> Iterator[Callable[..., None]]:
    """``inet_server(*args)``: start tests.netns.nfq.servers in cs-inet; stopped after."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> None:
        proc = subprocess.Popen(
            ns_exec(INET, sys.executable, "-m", "tests.netns.nfq.servers", *args),
            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
        )  # fmt: skip
        procs.append(proc)
        port = args[2]
        wait_for(lambda: f":{port} " in sh(INET, "ss", "-Hltun").stdout, 10, f"server :{port}")

    yield start
    for p in procs:
        p.terminate()
        p.wait(timeout=10)
