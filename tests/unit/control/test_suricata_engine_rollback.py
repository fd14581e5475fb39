"""The agent's Suricata engine when a configuration ``suricata -T`` accepted does not
run, with the stand-in binary (``tests/unit/nfq/fake_suricata.py``) behind a wrapper
that passes ``-T`` and exits at start, with an error in its log, when given queue 1
(the netns tier does the same with the real Suricata and a real queue collision,
``tests/netns/nfq/test_suricata_rollback.py``)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from control.steps.base import ConvergeError
from control.steps.inspection_engines import EngineSpec, SuricataEngine
from nfq.policy import InspectionPolicy, QueueRange

FAKE = Path(__file__).parents[1] / "nfq" / "fake_suricata.py"
HOME = "[10.0.0.0/8]"
WRAPPER = """#!/bin/sh
case " $* " in
  *" -T "*) echo "Configuration provided was successfully loaded. Exiting."; exit 0;;
  *" -q 1 "*) echo "[9 - W-NFQ#1] Error: nfq: nfq_create_queue failed" >> {log}; exit 1;;
esac
exec {python} {fake} "$@"
"""


def policy(**kw: object) -> InspectionPolicy:
    rules = ('drop tcp any any -> any 23 (msg:"telnet"; sid:1;)',)
    return InspectionPolicy.model_validate({"engine": "suricata", "rules": rules, **kw})


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[SuricataEngine]:
    log = tmp_path / "log" / "suricata" / "suricata.log"
    wrapper = tmp_path / "suricata"
    wrapper.write_text(WRAPPER.format(log=log, python=sys.executable, fake=FAKE))
    wrapper.chmod(0o755)
    eng = SuricataEngine(tmp_path / "run", tmp_path / "log", binary=str(wrapper))
    yield eng
    eng.stop()


def test_start_failure_restores_the_previous_suricata(engine: SuricataEngine) -> None:
    engine.apply(EngineSpec(policy(), HOME))
    assert engine.sup is not None and engine.sup.alive()
    yaml, first = engine.paths.config.read_text(), engine.sup.pid
    assert engine.tick()["suricata_state"] == "running"

    wider = policy(queues=QueueRange(first=0, last=1))
    with pytest.raises(ConvergeError, match="did not start with the new configuration"):
        engine.apply(EngineSpec(wider, HOME))
    status = engine.tick()
    rollback = status["suricata_rollback"]
    assert rollback["restored"] is True and "nfq_create_queue failed" in rollback["reason"]
    assert engine.paths.config.read_text() == yaml and engine.bound == (0,)
    assert engine.sup is not None and engine.sup.alive() and engine.sup.pid != first
    assert engine.queues() == frozenset({0})

    running = engine.sup.pid
    with pytest.raises(ConvergeError, match="not tried again") as err:
        engine.apply(EngineSpec(wider, HOME))
    assert "nfq_create_queue failed" in str(err.value)
    assert engine.sup.pid == running and engine.sup.alive()


def test_death_right_after_start_rolls_back_instead_of_restarting(
    engine: SuricataEngine,
) -> None:
    engine.apply(EngineSpec(policy(), HOME))
    yaml = engine.paths.config.read_text()
    engine.apply(EngineSpec(policy(stream_depth=4096), HOME))
    assert engine.sup is not None and engine.paths.config.read_text() != yaml
    dead = engine.sup.pid
    assert dead is not None
    os.kill(dead, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while engine.sup.alive():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    status = engine.tick()
    assert status["suricata_rollback"]["restored"] is True
    assert "exited" in status["suricata_rollback"]["reason"]
    assert engine.paths.config.read_text() == yaml
    assert engine.sup is not None and engine.sup.alive() and engine.sup.pid != dead
    assert engine.sup.restarts == 0


def test_a_confirmed_configuration_is_restarted_not_rolled_back(
    engine: SuricataEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine.apply(EngineSpec(policy(), HOME))
    engine.apply(EngineSpec(policy(stream_depth=4096), HOME))
    deeper = engine.paths.config.read_text()
    monkeypatch.setattr(engine, "confirm_until", time.monotonic() - 1)
    engine.tick()  # stayed up past its confirmation time
    assert engine.previous is None
    assert engine.sup is not None and engine.sup.pid is not None
    os.kill(engine.sup.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while engine.sup.alive():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    status = engine.tick()
    assert "suricata_rollback" not in status
    assert engine.paths.config.read_text() == deeper


def test_a_first_start_has_nothing_to_roll_back_to_and_is_restarted(
    engine: SuricataEngine,
) -> None:
    engine.apply(EngineSpec(policy(), HOME))
    assert engine.sup is not None and engine.sup.pid is not None
    engine.sup.backoff_min = 0.0
    os.kill(engine.sup.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while engine.sup.alive():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    engine.tick()  # seen dead: restart due
    status = engine.tick()
    assert "suricata_rollback" not in status and engine.sup.restarts == 1
    assert engine.sup.alive()
