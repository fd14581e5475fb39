"""High availability on EC2: the boot sequence, then leadership of the AZ, for ever.

One :class:`Ha` runs in the agent's process, on a thread of its own (a slow converge
never delays a lease renewal). Its boot sequence, each step reported in status:

1. ``imds``: who and where this instance is, and which ENI is which OS interface;
2. ``source_dest_check``: off on both ENIs (a NAT instance forwards for others);
3. ``converge``: the agent applied the config document (the data plane is up);
4. ``health``: the instance's own data-path check passes;
5. ``lease``: the instance joins its AZ's lease, as leader or standby;
6. ``lifecycle``: ``CompleteLifecycleAction`` ``CONTINUE`` of the Auto Scaling launch hook
   once the steps above passed, ``ABANDON`` with the reason after ``launch_timeout_s``.

Then, every lease period: a new leadership runs the takeover -- first conntrack
(the synced entries committed into the kernel, so established flows have their NAT
state before any packet arrives), then :class:`~control.aws.takeover.Takeover` (NAT
address, Elastic IP, routes), retried every period until it completes while the
lease is held; a lost leadership gives the NAT address up and returns conntrack sync to
standby. When the Auto Scaling group terminates the instance (IMDS
``autoscaling/target-lifecycle-state`` = ``Terminated``), a leader hands over first:
it releases the lease (a standby takes over at once) and then completes the
termination hook.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from control.aws.imds import Imds, ImdsError, InstanceIdentity
from control.aws.lease import Lease
from control.aws.session import describe_error
from control.aws.takeover import Report, Takeover

log = logging.getLogger("spectra.aws")

BOOT_STEPS = ("imds", "source_dest_check", "converge", "health", "lease", "lifecycle")


class SyncRole(Protocol):
    """Conntrack state sync as leadership changes (conntrackd in the product)."""

    def become_leader(self) -> dict[str, Any]: ...

    def become_standby(self) -> dict[str, Any]: ...


class NoSync:
    """No conntrack sync configured: takeovers keep addresses, not flows."""

    def become_leader(self) -> dict[str, Any]:
        return {"sync": "not configured"}

    def become_standby(self) -> dict[str, Any]:
        return {"sync": "not configured"}


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """The Auto Scaling group and hooks of this instance (absent outside an ASG)."""

    group: str
    launch_hook: str | None
    termination_hook: str | None
    launch_timeout_s: float = 300.0


@dataclass(slots=True)
class BootStep:
    state: str = "pending"  # pending | ok | failed | skipped
    detail: str = ""
    at: float | None = None


@dataclass(slots=True)
class HaStatus:
    """What ``spectra status`` shows of this instance's AWS life."""

    boot: dict[str, BootStep] = field(default_factory=lambda: {s: BootStep() for s in BOOT_STEPS})
    role: str = "booting"  # booting | standby | leader | terminating
    takeover: dict[str, Any] = field(default_factory=dict)
    sync: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Ha:
    """The boot sequence and the leadership loop of one instance (see the module doc)."""

    def __init__(
        self,
        imds: Imds,
        lease: Lease,
        takeover: Takeover,
        instance_ec2: Callable[[], Any],
        autoscaling: Callable[[], Any],
        converged: Callable[[], bool],
        health: Callable[[], bool],
        *,
        identity: InstanceIdentity,
        sync: SyncRole | None = None,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.imds = imds
        self.lease = lease
        self.takeover = takeover
        self.identity = identity
        self._ec2 = instance_ec2
        self._autoscaling = autoscaling
        self._converged = converged
        self._health = health
        self._sync: SyncRole = sync or NoSync()
        self._lifecycle = lifecycle
        self.status = HaStatus()
        self._leading_token: int | None = None
        self._took_over: int | None = None
        self._lock = threading.Lock()
        self._booted_at = time.monotonic()

    # -- boot ---------------------------------------------------------------------------

    def _mark(self, step: str, state: str, detail: str = "") -> None:
        self.status.boot[step] = BootStep(state, detail, time.time())
        (log.info if state != "failed" else log.error)("boot %s: %s %s", step, state, detail)

    def boot(self, stop: threading.Event) -> bool:
        """Run the boot steps; ``True`` once the instance may join the lease."""
        self._mark("imds", "ok", f"{self.identity.instance_id} in {self.identity.availability_zone}")
        enis = (self.takeover.enis.outside_eni, self.takeover.enis.inside_eni)
        try:
            for eni in enis:
                self._ec2().modify_network_interface_attribute(
                    NetworkInterfaceId=eni, SourceDestCheck={"Value": False}
                )
            self._mark("source_dest_check", "ok", f"off on {', '.join(enis)}")
        except (ClientError, BotoCoreError) as exc:
            self._mark("source_dest_check", "failed", describe_error(exc))
            return False
        if not self._wait(stop, self._converged, "converge", "the data plane is converged"):
            return False
        if not self._wait(stop, self._health, "health", "the data path answers"):
            return False
        return True

    def _wait(self, stop: threading.Event, check: Callable[[], bool], step: str, ok: str) -> bool:
        deadline = self._booted_at + (self._lifecycle.launch_timeout_s if self._lifecycle else 1e9)
        while not stop.is_set():
            try:
                if check():
                    self._mark(step, "ok", ok)
                    return True
            except Exception as exc:  # a broken check is a failed one
                self.status.boot[step].detail = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                reason = f"{step} did not pass within {self._lifecycle.launch_timeout_s:g}s"  # type: ignore[union-attr]
                self._mark(step, "failed", reason)
                self._complete("launch", "ABANDON", reason)
                return False
            stop.wait(0.2)
        return False

    def _complete(self, which: str, result: str, reason: str) -> None:
        lc = self._lifecycle
        hook = None if lc is None else (lc.launch_hook if which == "launch" else lc.termination_hook)
        if lc is None or hook is None:
            self._mark("lifecycle", "skipped", "not in an Auto Scaling group with this hook")
            return
        try:
            self._autoscaling().complete_lifecycle_action(
                LifecycleHookName=hook,
                AutoScalingGroupName=lc.group,
                InstanceId=self.identity.instance_id,
                LifecycleActionResult=result,
            )
            self._mark("lifecycle", "ok", f"{hook}: {result} ({reason})")
        except (ClientError, BotoCoreError) as exc:
            self._mark("lifecycle", "failed", f"{hook}: {result}: {describe_error(exc)}")

    # -- leadership ---------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Boot, then one lease period after another until ``stop``; hands over on exit
        only when the instance is being terminated (an agent restart keeps leading)."""
        if not self.boot(stop):
            return
        joined = False
        period = self.lease.settings.renew_interval_s
        while not stop.is_set():
            started = time.monotonic()
            self.period()
            if not joined and self.status.role in ("leader", "standby"):
                joined = True
                self._mark("lease", "ok", f"joined as {self.status.role}")
                self._complete("launch", "CONTINUE", "the data path answers")
            if self._terminating():
                self.hand_over()
                return
            stop.wait(max(0.0, self._next_wait(period) - (time.monotonic() - started)))

    def _next_wait(self, period: float) -> float:
        """A standby wakes right when the lease it saw expires (plus the skew margin)
        instead of up to a whole period later: the failover gap is the lease, not the
        lease plus the polling."""
        if self.status.role == "leader":
            return period
        due = self.lease.contend_due_in()
        return period if due is None else max(0.05, min(period, due))

    def period(self) -> None:
        """One lease step and what a change of leadership requires."""
        leading = self.lease.step()
        token = self.lease.token if leading else None
        if token is not None:
            self.status.role = "leader"
            if token != self._leading_token:
                self._leading_token = token
                self.status.sync = self._sync.become_leader()
            if self._took_over != token:
                report = self.takeover.run(token, lambda: self.lease.still_holds(token))
                self._report(report)
                if report.ok:
                    self._took_over = token
            return
        if self._leading_token is not None:
            self._leading_token = self._took_over = None
            self.takeover.release()
            self.status.sync = self._sync.become_standby()
        self.status.role = "standby"

    def _report(self, report: Report) -> None:
        self.status.takeover = {
            "token": report.token,
            "steps": report.steps,
            "seconds": report.seconds,
            "ok": report.ok,
            "error": report.error,
            "at": time.time(),
        }
        self.status.error = report.error

    def _terminating(self) -> bool:
        try:
            return self.imds.get("meta-data/autoscaling/target-lifecycle-state").strip() == (
                "Terminated"
            )
        except ImdsError:
            return False

    def hand_over(self) -> None:
        """Leave the AZ's leadership to a standby now, then let the group terminate us."""
        self.status.role = "terminating"
        if self._leading_token is not None:
            self.lease.release("the instance is terminating")
            self.takeover.release()
            self.status.sync = self._sync.become_standby()
            self._leading_token = self._took_over = None
        self._complete("termination", "CONTINUE", "handed over")

    def as_dict(self) -> dict[str, Any]:
        s = self.status
        return {
            "role": s.role,
            "instance_id": self.identity.instance_id,
            "availability_zone": self.identity.availability_zone,
            "boot": {k: {"state": v.state, "detail": v.detail, "at": v.at} for k, v in s.boot.items()},
            "takeover": s.takeover,
            "sync": s.sync,
            "lease": self.lease.status(),
            "error": s.error,
        }
