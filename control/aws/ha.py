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
standby. With ``aws.cross_az_fallback`` a leader whose own takeover completed also runs
:class:`~control.aws.fallback.CrossAzFallback` on the worker each period (another AZ
with no gateway gets its routes from this one). When the Auto Scaling group terminates
the instance (IMDS
``autoscaling/target-lifecycle-state`` = ``Terminated``), a leader hands over first:
it releases the lease (a standby takes over at once) and then completes the
termination hook.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from botocore.exceptions import BotoCoreError, ClientError

from control.aws.fallback import CrossAzFallback
from control.aws.health import DataPathHealth, answers_ping
from control.aws.imds import Imds, ImdsError, InstanceIdentity, identity_from_dict
from control.aws.lease import Lease
from control.aws.probe import SETTLE_S, ForwardProbe
from control.aws.session import describe_error
from control.aws.takeover import Enis, Report, Takeover, Zone, prefix_len
from control.config import ConfigDocument

log = logging.getLogger("spectra.aws")

BOOT_STEPS = ("imds", "source_dest_check", "converge", "health", "lease", "lifecycle")


@runtime_checkable
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
        lifecycle: Lifecycle | Callable[[], Lifecycle | None] | None = None,
        fallback: CrossAzFallback | None = None,
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
        # looked up on the HA thread after the lease is resumed (an Auto Scaling call
        # must not delay a restarted agent's resume)
        self._lifecycle_source = lifecycle
        self._fallback = fallback
        self.status = HaStatus()
        self._leading_token: int | None = None
        self._took_over: int | None = None
        self._took_over_at = 0.0
        self._failed_with: str | None = None  # the cause of the last failure notified
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._booted_at = time.monotonic()
        self._resumed = False

    # -- boot ---------------------------------------------------------------------------

    @functools.cached_property
    def _lifecycle(self) -> Lifecycle | None:
        source = self._lifecycle_source
        return source() if callable(source) else source

    def _mark(self, step: str, state: str, detail: str = "") -> None:
        self.status.boot[step] = BootStep(state, detail, time.time())
        (log.info if state != "failed" else log.error)("boot %s: %s %s", step, state, detail)

    def boot(self, stop: threading.Event) -> bool:
        """Run the boot steps; ``True`` once the instance may join the lease."""
        self._mark(
            "imds", "ok", f"{self.identity.instance_id} in {self.identity.availability_zone}"
        )
        # an agent restart: the pinned data plane kept forwarding and the lease is still
        # ours; keep it (first thing, before it runs out under the standby)
        healthy = self._health()
        self._resumed = healthy and self.lease.resume()
        if not healthy:
            log.info("boot: no lease resume, the data path is not healthy: %s",
                     getattr(self._health, "last_failure", None))  # fmt: skip
        enis = (self.takeover.enis.outside_eni, self.takeover.enis.inside_eni)
        try:
            for eni in enis:
                self._ec2().modify_network_interface_attribute(
                    NetworkInterfaceId=eni, SourceDestCheck={"Value": False}
                )
            self._mark("source_dest_check", "ok", f"off on {', '.join(enis)}")
            self.status.error = self.takeover.warm()
        except (ClientError, BotoCoreError) as exc:
            self._mark("source_dest_check", "failed", describe_error(exc))
            return self._resumed
        if self._resumed:
            for step in ("converge", "health"):
                self._mark(step, "ok", "resumed: the pinned data plane kept forwarding")
            return True
        if not self._wait(stop, self._converged, "converge", "the data plane is converged"):
            return False
        return self._wait(stop, self._health, "health", "the data path answers")

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
        hook = (
            None if lc is None else (lc.launch_hook if which == "launch" else lc.termination_hook)
        )
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
        try:
            self._run(stop)
        finally:  # a takeover in flight finishes before a rebuilt loop starts its own
            self.settle(timeout=30)

    def _run(self, stop: threading.Event) -> None:
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
                if self._resumed:
                    self._mark("lifecycle", "skipped", "an agent restart: launched before")
                else:
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
        """One lease step and what a change of leadership requires. The takeover's EC2
        calls (a second or more) run on a worker thread, so they never delay the next
        renewal; the worker is fenced by the lease before every write."""
        leading = self.lease.step()
        token = self.lease.token if leading else None
        if token is not None:
            self.status.role = "leader"
            if token != self._leading_token:
                self._leading_token = token
                self.status.sync = self._sync.become_leader()
            worker = self._worker
            if worker is not None and worker.is_alive():
                return
            if self._took_over != token:
                self._worker = threading.Thread(
                    target=self._take_over, args=(token,), name="spectra-takeover", daemon=True
                )
                self._worker.start()
            elif self._fallback is not None:  # our own AZ first, then the orphans
                self._worker = threading.Thread(
                    target=self._adopt, args=(token,), name="spectra-fallback", daemon=True
                )
                self._worker.start()
            return
        if self._leading_token is not None:
            self._give_up()
        self.status.role = "standby"

    def holding(self) -> int | None:
        """The lease token under which this instance leads with its takeover complete
        (the NAT address, Elastic IP and routes are its own) for :data:`SETTLE_S` (AWS
        applies a moved address, association and route within seconds), else None."""
        token = self._took_over
        if token is None or token != self._leading_token:
            return None
        return token if time.monotonic() - self._took_over_at >= SETTLE_S else None

    @property
    def forward_probe(self) -> ForwardProbe | None:
        forward: ForwardProbe | None = getattr(self._health, "forward", None)
        return forward

    def start_probe(self) -> None:
        if self.forward_probe is not None:
            self.forward_probe.start()

    def settle(self, timeout: float | None = None) -> None:
        """Wait for a takeover in flight (tests, and before a hand-over)."""
        if self._worker is not None:
            self._worker.join(timeout)

    def _take_over(self, token: int) -> None:
        report = self.takeover.run(token, lambda: self.lease.still_holds(token))
        self._report(report)
        if report.ok:
            self._took_over, self._took_over_at = token, time.monotonic()

    def _adopt(self, token: int) -> None:
        """One period of the cross-AZ fallback (:mod:`control.aws.fallback`)."""
        assert self._fallback is not None
        try:
            self._fallback.step(token)
        except Exception as exc:  # reported; the next period tries again
            log.exception("cross-AZ fallback: %s", exc)

    def _give_up(self) -> None:
        """Leadership is gone: wait for a takeover still running (its fence stops its
        writes), then give the NAT address up and return conntrack sync to standby."""
        self.settle()
        self._worker = None
        self._leading_token = self._took_over = self._failed_with = None
        self.takeover.release()
        if self._fallback is not None:
            self._fallback.release_all("this instance no longer leads its own AZ")
        self.status.sync = self._sync.become_standby()

    def _report(self, report: Report) -> None:
        """The takeover's outcome into status; a failed step (not a fenced one: the
        lease says that) is an event once per token and cause (step and error code: an
        AWS message may differ per request), and so is the run that completes a takeover
        after a failure -- an alert for a failover stuck half way."""
        if report.cause is not None and report.cause != self._failed_with:
            self.lease.note("takeover_failed", report.token, report.error or report.cause)
            self._failed_with = report.cause
        elif report.ok and self._failed_with is not None:
            self.lease.note(
                "takeover_recovered", report.token, f"completed after: {self._failed_with}"
            )
            self._failed_with = None
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
            self._give_up()
        self._complete("termination", "CONTINUE", "handed over")

    def as_dict(self) -> dict[str, Any]:
        s = self.status
        return {
            "role": s.role,
            "instance_id": self.identity.instance_id,
            "availability_zone": self.identity.availability_zone,
            "boot": {
                k: {"state": v.state, "detail": v.detail, "at": v.at} for k, v in s.boot.items()
            },
            "takeover": s.takeover,
            "sync": s.sync,
            "lease": self.lease.status(),
            "forward_probe": None if self.forward_probe is None else self.forward_probe.status(),
            "cross_az_fallback": {"enabled": False}
            if self._fallback is None
            else self._fallback.status(),
            "error": s.error,
        }


def _mac(ifname: str) -> str | None:
    """The MAC of ``ifname`` in this network namespace (netlink: sysfs shows the
    namespace it was mounted in, which an agent started with ``--netns`` is not)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return None
        mac: str = ipr.get_links(found[0])[0].get_attr("IFLA_ADDRESS")
        return mac.lower()


def enis_for(identity: InstanceIdentity, outside: str, inside: str) -> Enis:
    """Which ENI is which OS interface, matched by MAC address."""
    by_mac = {i.mac.lower(): i for i in identity.interfaces}
    found = {}
    for role, ifname in (("outside", outside), ("inside", inside)):
        mac = _mac(ifname)
        if mac is None or mac not in by_mac:
            raise ImdsError(
                f"interfaces.{role}: {ifname!r} (MAC {mac}) is none of this instance's ENIs "
                f"({', '.join(f'{i.interface_id} {i.mac}' for i in identity.interfaces)})"
            )
        found[role] = by_mac[mac]
    cidr = found["outside"].subnet_cidr
    if cidr is None:
        raise ImdsError(f"IMDS names no subnet CIDR for {found['outside'].interface_id}")
    return Enis(
        found["outside"].interface_id, outside, found["inside"].interface_id, prefix_len(cidr)
    )


class HaRunner:
    """The agent's AWS side: the instance identity (IMDS, once), then :class:`Ha` built
    from the document's ``aws`` section and run on its own thread; rebuilt when the
    section changes (a restart of the loop keeps the lease: :meth:`Lease.resume`)."""

    def __init__(
        self,
        imds: Imds,
        converged: Callable[[], bool],
        sync: Callable[[], SyncRole | None],
        *,
        zone: str | None = None,
        cache: Path | None = None,
    ) -> None:
        self.imds = imds
        self.zone = zone  # an override of the instance's Availability Zone
        self.cache = cache  # the identity read at the first start (see identify)
        self.identity: InstanceIdentity | None = None
        self._converged = converged
        self._sync = sync
        self._section: Any = None
        self._ha: Ha | None = None
        self._aws: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def identify(self, stop: threading.Event) -> InstanceIdentity | None:
        """Read the instance identity, retrying until it answers or ``stop``."""
        while self.identity is None and not stop.is_set():
            try:
                identity = self._cached() or self.imds.identity()
                self._keep(identity)
                if self.zone:
                    identity = dataclasses.replace(identity, availability_zone=self.zone)
                self.identity = identity
                self.error = None
            except ImdsError as exc:
                self.error = str(exc)
                log.error("instance metadata: %s", exc)
                stop.wait(2.0)
        return self.identity

    def _cached(self) -> InstanceIdentity | None:
        """The identity a previous start of the agent read, if it is this instance's
        (one IMDS read checks the instance id): a restarted agent reaches its lease in
        one request instead of a dozen. The cache lives in the run directory (tmpfs), so
        a reboot reads IMDS afresh."""
        if self.cache is None:
            return None
        try:
            cached = identity_from_dict(json.loads(self.cache.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s is unusable, reading IMDS: %s", self.cache, exc)
            return None
        if self.imds.get("meta-data/instance-id").strip() != cached.instance_id:
            return None
        log.info("instance %s in %s (%s): identity from %s", cached.instance_id,
                 cached.availability_zone, cached.region, self.cache)  # fmt: skip
        return cached

    def _keep(self, identity: InstanceIdentity) -> None:
        if self.cache is not None:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache.with_suffix(".tmp")
            tmp.write_text(json.dumps(dataclasses.asdict(identity)))
            tmp.replace(self.cache)

    def configure(self, doc: ConfigDocument) -> None:
        """Start, restart or stop the HA loop for ``doc``'s ``aws`` section."""

        section = doc.aws
        if section == self._section and (self._thread is None or self._thread.is_alive()):
            return
        self._section = section
        identity = self.identity
        if identity is None or identity.availability_zone not in section.zones:
            self.stop()
            self.error = (
                None
                if identity is None
                else f"aws.zones has no entry for {identity.availability_zone}: no leader election"
            )
            return
        try:
            aws, ha = self._build(doc, identity)
        except (ImdsError, ValueError, ClientError, BotoCoreError) as exc:
            kept = " (the previous aws section keeps running)" if self._thread else ""
            self.error = f"{exc}{kept}"
            log.error("AWS high availability not (re)started: %s%s", exc, kept)
            return
        # built before the old loop stops: the lease goes unrenewed only for the swap,
        # and its counters and events carry over (a rebuild is no new instance)
        if self._ha is not None:
            ha.lease.inherit(self._ha.lease)
        self.stop()
        self._aws, self._ha, self.error = aws, ha, None
        ha.start_probe()  # the old loop's probe is stopped; this one replaces its veth
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=ha.run, args=(self._stop,), name="spectra-ha", daemon=True
        )
        self._thread.start()

    def _build(self, doc: ConfigDocument, identity: InstanceIdentity) -> tuple[Any, Ha]:
        from control.aws import build

        section = doc.aws
        aws = build(section, identity)
        zone_cfg = section.zones[identity.availability_zone]
        zone = Zone(
            identity.availability_zone,
            str(zone_cfg.nat_address),
            zone_cfg.elastic_ip_allocation_id,
            tuple(zone_cfg.route_tables),
        )
        enis = enis_for(identity, doc.interfaces.outside, doc.interfaces.inside)
        h = section.health
        forward = (
            ForwardProbe(h.forward_probes, h.probe_subnet, h.timeout_s, h.interval_s)
            if h.forward_probes
            else None
        )
        health = DataPathHealth(
            doc.interfaces.inside,
            doc.interfaces.outside,
            h.probe,
            h.timeout_s,
            h.interval_s,
            forward=forward,
        )
        sessions = aws.sessions
        takeover = Takeover(
            zone, enis, lambda: sessions.instance_client("ec2"), lambda: sessions.client("ec2")
        )
        inside = next(i for i in identity.interfaces if i.interface_id == enis.inside_eni)
        ha = Ha(
            self.imds,
            aws.lease(health, address=inside.primary_ip, holder_alive=answers_ping),
            takeover,
            lambda: sessions.instance_client("ec2"),
            lambda: sessions.instance_client("autoscaling"),
            self._converged,
            health,
            identity=identity,
            sync=self._sync(),
            lifecycle=lambda: self._lifecycle(sessions, identity, section.lifecycle),
            fallback=self._fallback(aws, section, identity, enis, doc.interfaces.inside),
        )
        if forward is not None:
            forward.counting = ha.holding
        return aws, ha

    @staticmethod
    def _fallback(
        aws: Any, section: Any, identity: InstanceIdentity, enis: Enis, inside: str
    ) -> CrossAzFallback | None:
        if not section.cross_az_fallback.enabled:
            return None
        cidr = next(
            (i.subnet_cidr for i in identity.interfaces if i.interface_id == enis.inside_eni),
            None,
        )
        if cidr is None:
            raise ImdsError(f"IMDS names no subnet CIDR for {enis.inside_eni}")
        fallback: CrossAzFallback | None = aws.fallback(enis.inside_eni, inside, cidr)
        return fallback

    @staticmethod
    def _lifecycle(sessions: Any, identity: InstanceIdentity, lc: Any) -> Lifecycle | None:
        if lc.launch_hook is None and lc.termination_hook is None:
            return None
        found = sessions.instance_client("autoscaling").describe_auto_scaling_instances(
            InstanceIds=[identity.instance_id]
        )["AutoScalingInstances"]
        if not found:
            return None
        return Lifecycle(
            found[0]["AutoScalingGroupName"],
            lc.launch_hook,
            lc.termination_hook,
            lc.launch_timeout_s,
        )

    def client(self, service: str) -> Any:
        """An operational-role client of the session factory the HA side built
        (:class:`RuntimeError` until it is built)."""
        if self._aws is None:
            raise RuntimeError(
                "the AWS session factory is not built (no aws.zones entry for this "
                f"instance's zone, or IMDS unread){': ' + self.error if self.error else ''}"
            )
        return self._aws.sessions.client(service)

    def stop(self) -> None:
        """Stop the loop; the lease runs out by itself (a restarted agent resumes it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None
        if self._ha is not None and self._ha.forward_probe is not None:
            self._ha.forward_probe.stop()

    @property
    def sessions(self) -> Any:
        """The session factory of the configured ``aws`` section (None before)."""
        return self._aws.sessions if self._aws is not None else None

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.error, "imds": self.imds.status()}
        if self._ha is not None:
            out |= self._ha.as_dict()
        if self._aws is not None:
            out["sessions"] = self._aws.sessions.status()
            out["notify"] = self._aws.notifier.status()
        return out
