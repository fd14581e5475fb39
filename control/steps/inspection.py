"""The inspection step: the config document's ``inspection`` section made real.

Enabled: the built-in engine (``python -m nfq engine``) starts first, as a process in
its own session that the step supervises, then the queueing rules go in
(:func:`nfq.netfilter.apply`), so a fail-closed policy never queues to nobody. The step
never runs Suricata: ``engine: suricata`` is refused on a host without a ``suricata``
binary and otherwise runs the built-in engine too. A change of rules alone is a reload
(SIGHUP: the engine swaps rule sets between packets); any other change restarts the
engine. Disabled: rules out first, then the engine stops. Rules are parsed when the
step renders, so an unsupported keyword fails the converge with its sid before
anything changes; the config API renders every step before it stores a PUT or PATCH
and in its dry run, so it rejects such a document too. The engine outlives the agent
(the data plane never depends on the agent): a restarted agent adopts it through its
pid file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from control.config import ConfigDocument
from control.steps.base import ConvergeError, Host, RenderError, StepContext
from nfq import InspectionPolicy, netfilter
from nfq.engine.rules import RuleError, load_rules

log = logging.getLogger("spectra.control")


@dataclass(frozen=True, slots=True)
class InspectionPart:
    """The policy, its rules parsed once, and the interface whose traffic is inspected."""

    policy: InspectionPolicy
    inside: str


def check_rules(policy: InspectionPolicy) -> None:
    """Parse every rule the policy names; raise :class:`RenderError` on the first bad one."""
    if not policy.enabled:
        return
    try:
        load_rules(policy.rules, policy.rule_files, policy.vars)
    except RuleError as exc:
        raise RenderError("inspection.rules", str(exc)) from exc
    except OSError as exc:
        raise RenderError("inspection.rule_files", str(exc)) from exc


class InspectionStep:
    name = "inspection"

    def __init__(self, context: StepContext) -> None:
        self.run_dir = context.run_dir
        self.log_dir = context.log_dir
        self.restarts = 0
        self.pid: int | None = None
        self.core: str | None = None  # the running policy minus its inline rules
        self._adopt()

    @property
    def rules_file(self) -> Path:
        return self.run_dir / "inspection.rules"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "engine.pid"

    @property
    def policy_file(self) -> Path:
        return self.run_dir / "inspection.json"

    def _adopt(self) -> None:
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return
        if _is_engine(pid):
            self.pid, self.core = pid, self.policy_file.read_text()
            log.info("adopted the running inspection engine (pid %d)", pid)

    @staticmethod
    def render(doc: ConfigDocument, host: Host) -> InspectionPart:
        check_rules(doc.inspection)
        return InspectionPart(doc.inspection, doc.interfaces.inside)

    def apply(self, part: InspectionPart) -> None:
        policy = part.policy
        if not policy.enabled:
            if self.core is not None:
                netfilter.remove()
                self._stop()
            return
        if policy.engine == "suricata" and shutil.which("suricata") is None:
            raise ConvergeError(
                "inspection.engine: 'suricata' is not installed on this host "
                "(deploy/suricata/README.md); accepted here: 'builtin'"
            )
        core = policy.model_copy(update={"rules": ()}).model_dump_json()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rules_file.write_text("".join(f"{r}\n" for r in policy.rules))
        if core != self.core or not self._alive():
            self._start(core)
        elif self.pid is not None:
            os.kill(self.pid, signal.SIGHUP)  # same engine settings: reload the rules only
        netfilter.apply(policy, in_interface=part.inside)

    def _alive(self) -> bool:
        if self.pid is None:
            return False
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, os.WNOHANG)  # reap it if it was our child and died
        return _is_engine(self.pid)

    def _start(self, core: str) -> None:
        self._stop()
        self.policy_file.write_text(core)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "nfq", "engine", "--policy", str(self.policy_file),
            "--rules", str(self.rules_file), "--eve", str(self.log_dir / "eve.json"),
            "--stats", str(self.run_dir / "engine.json"),
        ]  # fmt: skip
        self.pid = os.posix_spawn(sys.executable, argv, dict(os.environ), setsid=True)
        self.pid_file.write_text(str(self.pid))
        self.core = core
        log.info("inspection engine started (pid %d)", self.pid)

    def tick(self) -> dict[str, object]:
        """Supervise: restart a dead engine (fail-open traffic flowed meanwhile)."""
        if self.core is not None and not self._alive():
            log.error("inspection engine died; restarting it")
            self.restarts += 1
            self._start(self.core)
        return {"engine_pid": self.pid, "engine_restarts": self.restarts}

    def close(self) -> None:
        """Nothing to release: the engine outlives the agent (adopted on restart)."""

    def _stop(self) -> None:
        if self.pid is not None and self._alive():
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while self._alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._alive():
                os.kill(self.pid, signal.SIGKILL)
        self.pid = self.core = None
        self.pid_file.unlink(missing_ok=True)


def _is_engine(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and b"nfq" in cmdline and b"engine" in cmdline
