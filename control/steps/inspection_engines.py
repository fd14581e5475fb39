"""The two inspector engines the inspection step runs, behind one interface.

* :class:`BuiltinEngine`: ``python -m nfq engine``; a change of rules alone is a reload
  (SIGHUP: the engine swaps rule sets between packets), any other change a restart.
* :class:`SuricataEngine`: Suricata 7 in NFQ IPS mode (:mod:`nfq.suricata`). Every
  change is rendered into a staging directory and loaded by ``suricata -T`` first; only
  then is it installed. A change of rules alone is ``reload-rules`` over the command
  socket (Suricata keeps verdicting while it swaps detection engines); a change of
  ``suricata.yaml`` restarts Suricata. A restart that fails (Suricata exits, or never
  answers on its command socket, although ``suricata -T`` passed: a queue some other
  process bound meanwhile, memory) puts the previous files back and starts the
  previous Suricata again; so does a new Suricata that dies within
  ``CONFIRM_SECONDS`` of its start (it is not restarted with the configuration that
  killed it). Either way the reason is kept and reported in status
  (``suricata_rollback``), and the converge fails with it.

Both run in their own session and outlive the agent; a new agent adopts them by pid
file. A queue that some other process has bound is refused before anything changes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from control.steps.base import ConvergeError
from nfq import process
from nfq.domains import compile_domain_lists
from nfq.policy import InspectionPolicy
from nfq.suricata.config import SuricataPaths, rule_files, write_config
from nfq.suricata.supervisor import Supervisor
from nfq.suricata.unixsock import UnixSocketClient
from nfq.suricata.validate import SuricataConfigError, check_config

log = logging.getLogger("spectra.control")

NFQUEUE_PROC = Path("/proc/net/netfilter/nfnetlink_queue")
CONFIRM_SECONDS = 30.0  # a new configuration's Suricata must stay up this long
RETRY_FAILED_SECONDS = 300.0  # a configuration that did not run is not tried before


@dataclass(frozen=True, slots=True)
class EngineSpec:
    """What an engine runs: the policy, its effective HOME_NET, the rules as text."""

    policy: InspectionPolicy
    home_net: str


class Engine(Protocol):
    """An inspector process the step starts, reloads, supervises and stops."""

    def running(self) -> bool: ...

    def queues(self) -> frozenset[int]:
        """The NFQUEUE numbers the running engine binds (empty when stopped)."""
        ...

    def apply(self, spec: EngineSpec) -> None: ...

    def tick(self) -> dict[str, Any]: ...

    def stop(self) -> None: ...

    @property
    def eve(self) -> Path:
        """The eve.json the engine writes its alerts and drops to."""
        ...

    def reopen_log(self) -> None:
        """Make the engine reopen eve.json (after it was rotated)."""
        ...


def bound_queues() -> set[int]:
    """NFQUEUE numbers some process has bound (``/proc/net/netfilter/nfnetlink_queue``)."""
    try:
        lines = NFQUEUE_PROC.read_text().splitlines()
    except OSError:
        return set()
    return {int(line.split()[0]) for line in lines if line.split()}


def check_queues_free(policy: InspectionPolicy, ours: frozenset[int] = frozenset()) -> None:
    """Raise when a queue of the policy is bound by a process other than our engines
    (``ours``: the queues the running engine binds)."""
    taken = sorted((set(policy.queues.numbers) & bound_queues()) - ours)
    if taken:
        raise ConvergeError(
            f"inspection.queues: queue {taken[0]} is already bound by another process "
            f"(/proc/net/netfilter/nfnetlink_queue); choose free queue numbers"
        )


class BuiltinEngine:
    """``python -m nfq engine`` supervised through its pid file."""

    def __init__(self, run_dir: Path, log_dir: Path) -> None:
        self.run_dir, self.log_dir = run_dir, log_dir
        self.restarts = 0
        self.core: str | None = None  # the running policy minus its rules
        self.last_core: str | None = None  # what ran before stop(), for resume()
        self.pid = process.read_pid(self.pid_file)
        if process.is_running(self.pid, "nfq", "engine"):
            self.core = self.policy_file.read_text()
            log.info("adopted the running inspection engine (pid %d)", self.pid)
        else:
            self.pid = None

    rules_file = property(lambda self: self.run_dir / "inspection.rules")
    pid_file = property(lambda self: self.run_dir / "engine.pid")
    policy_file = property(lambda self: self.run_dir / "inspection.json")

    def running(self) -> bool:
        return self.core is not None

    def queues(self) -> frozenset[int]:
        if self.core is None:
            return frozenset()
        return frozenset(InspectionPolicy.model_validate_json(self.core).queues.numbers)

    @property
    def eve(self) -> Path:
        return self.log_dir / "eve.json"

    def reopen_log(self) -> None:
        if self._alive() and self.pid is not None:
            os.kill(self.pid, signal.SIGUSR1)

    def _alive(self) -> bool:
        return process.is_running(self.pid, "nfq", "engine")

    def apply(self, spec: EngineSpec) -> None:
        policy = spec.policy
        rules = [*compile_domain_lists(policy.domain_lists), *policy.rules]
        core = policy.model_copy(
            update={
                "rules": (),
                "domain_lists": (),
                "vars": {**policy.vars, "HOME_NET": spec.home_net},
            }
        ).model_dump_json()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.rules_file.write_text("".join(f"{r}\n" for r in rules))
        if core != self.core or not self._alive():
            self._start(core)
        elif self.pid is not None:
            os.kill(self.pid, signal.SIGHUP)  # same engine settings: reload the rules only

    def _start(self, core: str) -> None:
        self.stop()
        self.policy_file.write_text(core)
        argv = [
            sys.executable, "-m", "nfq", "engine", "--policy", str(self.policy_file),
            "--rules", str(self.rules_file), "--eve", str(self.eve),
            "--stats", str(self.run_dir / "engine.json"),
        ]  # fmt: skip
        self.pid = process.spawn(argv, self.log_dir / "engine.log")
        self.pid_file.write_text(str(self.pid))
        self.core = core
        log.info("inspection engine started (pid %d)", self.pid)

    def resume(self) -> None:
        """Start again what ran before :meth:`stop` (its policy and rules files are kept)."""
        if self.last_core is not None and self.core is None:
            self._start(self.last_core)
            log.warning("inspection engine: the previous built-in engine runs again")

    def tick(self) -> dict[str, Any]:
        """Restart a dead engine (the policy's fail-open/closed held traffic meanwhile)."""
        if self.core is not None and not self._alive():
            log.error("inspection engine died; restarting it")
            self.restarts += 1
            self._start(self.core)
        return {"engine": "builtin", "engine_pid": self.pid, "engine_restarts": self.restarts}

    def stop(self) -> None:
        if self.pid is not None:
            process.terminate(self.pid, "nfq", "engine")
        self.last_core = self.core or self.last_core
        self.pid = self.core = None
        self.pid_file.unlink(missing_ok=True)


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(str(p).encode() + b"\0")
        h.update(p.read_bytes() if p.is_file() else b"(missing)")
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A configuration Suricata ran: its yaml, its rendered rule files, its queues."""

    yaml: str
    rules: dict[Path, str]
    queues: tuple[int, ...]
    digest: str


class SuricataEngine:
    """Suricata supervised by :class:`nfq.suricata.Supervisor` under ``run_dir/suricata``."""

    def __init__(
        self, run_dir: Path, log_dir: Path, binary: str = "suricata", netns: str | None = None
    ) -> None:
        root = run_dir / "suricata"
        self.paths = SuricataPaths(root / "etc", root / "rules", log_dir / "suricata", root / "run")
        self.stage = SuricataPaths(
            root / "stage" / "etc", root / "stage" / "rules", root / "stage" / "log", root / "run"
        )
        self.binary, self.netns = binary, netns
        self.bound: tuple[int, ...] = ()
        self.rules_digest = ""
        self.sup: Supervisor | None = None
        self.previous: Snapshot | None = None  # what runs again if the new one dies early
        self.confirm_until = 0.0
        self.rollback: dict[str, Any] | None = None  # the last rollback: when, why
        self.key = ""  # the running configuration (staged yaml, rules, queues)
        self.failed: tuple[str, float] | None = None  # a configuration that did not run
        queues_file = root / "queues"
        if queues_file.exists():
            sup = self._supervisor(tuple(int(q) for q in queues_file.read_text().split()))
            if sup.adopt():
                self.sup, self.bound = sup, tuple(sup.queues)
                self.rules_digest = (
                    self.digest_file.read_text() if self.digest_file.exists() else ""
                )

    def _supervisor(self, queues: tuple[int, ...]) -> Supervisor:
        return Supervisor(self.paths, queues, binary=self.binary, netns=self.netns)

    def running(self) -> bool:
        return self.sup is not None

    def queues(self) -> frozenset[int]:
        return frozenset(self.bound) if self.sup is not None else frozenset()

    @property
    def eve(self) -> Path:
        return self.paths.eve

    def reopen_log(self) -> None:
        if self.sup is not None:
            with UnixSocketClient(self.paths.socket, timeout=5.0) as client:
                client.command("reopen-log-files")

    @property
    def digest_file(self) -> Path:
        return self.paths.run_dir.parent / "rules.sha256"

    def _rules_digest(self, policy: InspectionPolicy) -> str:
        names = rule_files(policy)
        return _digest([Path(n) if n.startswith("/") else self.paths.rule_dir / n for n in names])

    def validate(self, spec: EngineSpec) -> None:
        """Render into the staging directory and load it with ``suricata -T``."""
        if shutil.which(self.binary) is None:
            raise ConvergeError(
                "inspection.engine: 'suricata' is not installed on this host "
                "(make deps, or deploy/suricata/install-suricata.sh); accepted here: 'builtin'"
            )
        shutil.rmtree(self.stage.rule_dir, ignore_errors=True)
        write_config(spec.policy, self.stage, spec.home_net)
        try:
            check_config(self.stage.config, binary=self.binary)
        except SuricataConfigError as exc:
            raise ConvergeError(f"inspection: suricata -T refused the change: {exc}") from exc

    def _snapshot(self) -> Snapshot | None:
        if not self.paths.config.exists():
            return None
        rules = {p: p.read_text() for p in self.paths.rule_dir.glob("*.rules")}
        return Snapshot(self.paths.config.read_text(), rules, self.bound, self.rules_digest)

    def _stage_key(self, spec: EngineSpec) -> str:
        names = rule_files(spec.policy)
        files = [self.stage.config, *(self.stage.rule_dir / n for n in names)]
        return _digest(files) + ":" + ",".join(map(str, spec.policy.queues.numbers))

    def apply(self, spec: EngineSpec) -> None:
        self.validate(spec)
        key = self._stage_key(spec)
        if self.failed is not None and self.failed[0] == key:
            wait = self.failed[1] + RETRY_FAILED_SECONDS - time.monotonic()
            if wait > 0:
                reason = self.rollback["reason"] if self.rollback else ""
                raise ConvergeError(
                    f"inspection: this suricata configuration did not run; not tried again "
                    f"for {wait:.0f}s (the previous one keeps running): {reason}"
                )
        queues = tuple(spec.policy.queues.numbers)
        old = self._snapshot() if self.sup is not None else None
        shutil.rmtree(self.paths.rule_dir, ignore_errors=True)
        write_config(spec.policy, self.paths, spec.home_net)
        new_yaml = self.paths.config.read_text()
        digest = self._rules_digest(spec.policy)
        alive = self.sup is not None and self.sup.alive()
        if alive and old is not None and new_yaml == old.yaml and queues == self.bound:
            if digest != self.rules_digest:
                assert self.sup is not None
                self.sup.reload_rules()
                self._set_digest(digest)
                log.info("suricata reloaded its rules")
            return
        failed_key, self.key = self.key, key
        try:
            self._restart(queues)
        except RuntimeError as exc:
            reason = f"suricata did not start with the new configuration: {exc}"
            self._roll_back(old, reason)
            self.key = failed_key
            raise ConvergeError(f"inspection: {reason}") from exc
        self.previous = old
        # early death: back to ``old``; a first start has none, its death is restarted
        self.confirm_until = time.monotonic() + CONFIRM_SECONDS if old is not None else 0.0
        self._set_digest(digest)

    def _set_digest(self, digest: str) -> None:
        self.rules_digest = digest
        self.digest_file.write_text(digest)

    def _restart(self, queues: tuple[int, ...]) -> None:
        if self.sup is not None:
            self.sup.stop()
        self.sup, self.bound = self._supervisor(queues), queues
        (self.paths.run_dir.parent / "queues").write_text(" ".join(map(str, queues)))
        self.sup.start(wait=self.sup.startup_grace)

    def _roll_back(self, old: Snapshot | None, reason: str) -> None:
        """Stop the failed Suricata, put ``old`` back and start it; record why."""
        log.error("suricata: %s", reason)
        self.rollback = {"at": time.time(), "reason": reason[-1200:], "restored": False}
        self.failed = (self.key, time.monotonic())
        self.previous, self.confirm_until = None, 0.0
        if self.sup is not None:
            self.sup.stop()
            self.sup = None
        if old is None:
            return
        shutil.rmtree(self.paths.rule_dir, ignore_errors=True)
        self.paths.rule_dir.mkdir(parents=True, exist_ok=True)
        self.paths.config.write_text(old.yaml)
        for path, text in old.rules.items():
            path.write_text(text)
        try:
            self._restart(old.queues)
        except RuntimeError as exc:
            log.error("suricata: the previous configuration did not start either: %s", exc)
            if self.sup is not None:
                self.sup.stop()
            self.sup = None
            return
        self._set_digest(old.digest)
        self.rollback["restored"] = True
        log.warning("suricata: the previous configuration runs again")

    def tick(self) -> dict[str, Any]:
        if self.sup is None:
            out: dict[str, Any] = {"engine": "suricata", "suricata_state": "stopped"}
        else:
            self._confirm()
            out = self._supervised()
        if self.rollback is not None:
            out["suricata_rollback"] = dict(self.rollback)
        return out

    def _confirm(self) -> None:
        """A new configuration's Suricata that died before ``confirm_until``: roll back."""
        assert self.sup is not None
        if not self.confirm_until:
            return
        now = time.monotonic()
        if self.sup.alive():
            if now >= self.confirm_until:
                self.previous, self.confirm_until = None, 0.0  # confirmed
            return
        lived = now - (self.confirm_until - CONFIRM_SECONDS)
        reason = (
            f"suricata exited {lived:.1f}s after it started with the new configuration: "
            f"{self.sup.log_tail()}"
        )
        self._roll_back(self.previous, reason)
        self.key = ""  # the previous one's key is not known here: any change is tried

    def _supervised(self) -> dict[str, Any]:
        if self.sup is None:
            return {"engine": "suricata", "suricata_state": "stopped"}
        self.sup.tick()
        st = self.sup.status()
        out: dict[str, Any] = {
            "engine": "suricata",
            "engine_pid": st.pop("pid"),
            "engine_restarts": st.pop("restarts"),
            "suricata_state": st.pop("state"),
            "suricata_version": st.pop("version"),
        }
        out.update(st)
        return out

    def stop(self) -> None:
        if self.sup is not None:
            self.sup.stop()
        self.sup, self.previous, self.confirm_until = None, None, 0.0
        (self.paths.run_dir.parent / "queues").unlink(missing_ok=True)
