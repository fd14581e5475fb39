"""Live vertical resize of one AZ's gateways: standbys first, a hand-over, then the leader.

``spectra aws resize --az A --instance-type T`` (:mod:`control.cli_resize`) runs
:class:`Resize`, whose steps are reported one by one as they end:

1. ``plan``: the AZ's leader (the lease item), its Auto Scaling group and the group's
   instances and types (``DescribeAutoScalingInstances``, ``DescribeAutoScalingGroups``,
   ``DescribeInstances``); the type is checked (``DescribeInstanceTypes``), a standby
   is required (without one the leader could only be replaced by a failover) and the
   leader's status is asked once, so that an HTTPS certificate that does not verify
   (:class:`~control.aws.gateway_status.StatusUntrusted`) stops the resize before
   anything changes;
2. ``launch_template``: a new version of the group's launch template with the type
   (``CreateLaunchTemplateVersion`` from the version the group launches, every other
   field kept), and the group pinned to it (``UpdateAutoScalingGroup``; "Update an Auto
   Scaling group" in the EC2 Auto Scaling user guide). Only this AZ's group changes:
   the template's ``$Default`` is left alone, so the groups of other AZs sharing the
   template launch what they did (one that follows ``$Latest`` would follow the new
   version: pin the groups, or give each AZ its own template);
3. ``replace_standby``: each standby is replaced (:class:`Replacer`; in AWS the group
   terminates it without decrementing the desired capacity and launches one from the new
   version), and the new instance must be of the type, report itself a healthy standby
   following the leader, with its conntrack sync caught up (its external cache holds
   ``sync_ratio`` of the leader's flows) -- else the resize stops here, the leader
   untouched;
4. ``handover``: :func:`~control.aws.lease.request_handover` asks the leader to give
   the lease to the new standby, which takes it over with the flows (the takeover of
   :mod:`control.aws.ha`: conntrack committed first, then the NAT address, the Elastic IP
   and the routes); the step ends when the new instance leads and its takeover is done;
5. ``replace_leader``: the former leader, a standby now, is replaced the same way;
6. ``verify``: every instance of the group is of the type, and the Elastic IP is the
   one it was, on the new leader's NAT address.

Every wait has a deadline; a step that fails raises :class:`ResizeAborted` naming the
step, what was done before it and the AZ as it is (which instance leads, of which type).
The executor talks only to AWS (through the :class:`~control.aws.session.SessionFactory`'s
operational role) and to the gateways' status (:class:`GatewayStatus`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from control.aws.gateway_status import GatewayStatus, StatusUntrusted
from control.aws.lease import LeaseError, read_record, request_handover
from control.aws.session import RoleInert, describe_error

log = logging.getLogger("spectra.aws")

STEPS = ("plan", "launch_template", "replace_standby", "handover", "replace_leader", "verify")
GONE = ("Terminating", "Terminating:Wait", "Terminating:Proceed", "Terminated", "Detaching")


class Clients(Protocol):
    """What the executor needs of :class:`~control.aws.session.SessionFactory`."""

    def client(self, service: str) -> Any: ...


class Replacer(Protocol):
    """Replace one instance of an Auto Scaling group by one launched from the group's
    launch template; returns the new instance's id once it exists."""

    def replace(self, group: str, instance_id: str) -> str: ...


class AsgReplacer:
    """The Auto Scaling group replaces the instance: ``TerminateInstanceInAutoScalingGroup``
    with ``ShouldDecrementDesiredCapacity=false`` (the group launches a replacement from
    its launch template; the termination lifecycle hook lets the agent leave cleanly),
    then the new instance is the one of the group that was not there before."""

    def __init__(
        self, autoscaling: Callable[[], Any], *, timeout_s: float = 600.0, poll_s: float = 2.0
    ) -> None:
        self._autoscaling = autoscaling
        self.timeout_s = timeout_s
        self.poll_s = poll_s

    def _instances(self, group: str) -> dict[str, str]:
        groups = self._autoscaling().describe_auto_scaling_groups(AutoScalingGroupNames=[group])
        return {
            i["InstanceId"]: i["LifecycleState"]
            for g in groups["AutoScalingGroups"]
            for i in g.get("Instances", [])
        }

    def replace(self, group: str, instance_id: str) -> str:
        before = set(self._instances(group))
        self._autoscaling().terminate_instance_in_auto_scaling_group(
            InstanceId=instance_id, ShouldDecrementDesiredCapacity=False
        )
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            new = [i for i, state in self._instances(group).items()
                   if i not in before and state not in GONE]  # fmt: skip
            if new:
                return new[0]
            time.sleep(self.poll_s)
        raise StepFailed(
            f"group {group} launched no replacement of {instance_id} within {self.timeout_s:g}s"
        )


class ResizeError(Exception):
    """A resize request that cannot be carried out as asked (bad type, no standby)."""


@dataclass(frozen=True, slots=True)
class Settings:
    """One resize: the AZ (``us-east-1a``), the type and the limits of each step."""

    az: str
    instance_type: str
    lease_table: str
    elastic_ip_allocation_id: str | None = None
    standby_timeout_s: float = 600.0
    handover_timeout_s: float = 60.0
    sync_ratio: float = 0.9
    poll_s: float = 1.0


@dataclass(frozen=True, slots=True)
class Step:
    """One step as it ended: ``ok``, ``skipped`` or ``failed``."""

    name: str
    state: str
    detail: str
    seconds: float
    instance_id: str | None = None
    new_instance_id: str | None = None


@dataclass(slots=True)
class Report:
    """Every step so far; ``error`` names the step that failed."""

    az: str
    instance_type: str
    steps: list[Step] = field(default_factory=list)
    ok: bool = False
    error: str | None = None
    failed_step: str | None = None
    az_now: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ResizeAborted(Exception):
    """A step failed; the report names it, what was done and the AZ as it is now."""

    def __init__(self, report: Report) -> None:
        super().__init__(f"{report.failed_step}: {report.error}")
        self.report = report


class StepFailed(Exception):
    """A step could not be done (raised by the steps and by a :class:`Replacer`)."""


@dataclass(slots=True)
class _Plan:
    group: str
    template: dict[str, Any]
    leader: str
    standbys: list[str]
    types: dict[str, str]
    eip: dict[str, Any] | None = None


class Resize:
    """The steps of the module doc, for ``settings`` (see :meth:`run`)."""

    def __init__(
        self,
        sessions: Clients,
        replacer: Replacer,
        status: GatewayStatus,
        settings: Settings,
        *,
        on_step: Callable[[Step], None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.replacer = replacer
        self.status = status
        self.settings = settings
        self.on_step = on_step or (lambda step: None)
        self.report = Report(settings.az, settings.instance_type)
        self._detail: str | None = None  # the current step's own account, when it has one
        self._new: str | None = None  # the instance the current step launched
        self._last: str | None = None  # what the current step's wait saw last
        self._undo: str | None = None  # what the launch template step changed

    # -- the steps -----------------------------------------------------------------------

    def run(self) -> Report:
        """Every step in order; raises :class:`ResizeAborted` at the first that fails."""
        plan = self._step("plan", self._plan)
        self._step("launch_template", lambda: self._launch_template(plan))
        todo = [i for i in plan.standbys if plan.types[i] != self.settings.instance_type]
        new_standbys: list[str] = []
        for old in todo:
            new = self._step("replace_standby", partial(self._replace, plan, old, plan.leader), old)
            new_standbys.append(new)
        if not todo:
            self._skip("replace_standby", "every standby is of the type already")
        if plan.types[plan.leader] == self.settings.instance_type:
            self._skip("handover", "the leader is of the type already: it keeps leading")
            self._skip("replace_leader", "the leader is of the type already")
        else:
            to = new_standbys[0] if new_standbys else plan.standbys[0]
            self._step("handover", lambda: self._handover(plan, to), plan.leader)
            self._step("replace_leader", lambda: self._replace(plan, plan.leader, to), plan.leader)
        self._step("verify", lambda: self._verify(plan))
        self.report.ok = True
        return self.report

    def _plan(self) -> _Plan:
        s = self.settings
        record = read_record(self._client("dynamodb"), s.lease_table, s.az)
        if record is None or record.holder is None or record.expires <= time.time():
            raise StepFailed(f"no live leader of {s.az} in lease table {s.lease_table!r}")
        self._check_type()
        self.status.state(record.holder)  # an untrusted HTTPS certificate stops it here
        asg = self._client("autoscaling")
        found = asg.describe_auto_scaling_instances(InstanceIds=[record.holder])
        if not found["AutoScalingInstances"]:
            raise StepFailed(f"the leader {record.holder} is in no Auto Scaling group")
        group_name = found["AutoScalingInstances"][0]["AutoScalingGroupName"]
        group = self._group(group_name)
        if "LaunchTemplate" not in group:
            raise StepFailed(
                f"group {group_name} launches without a launch template "
                "(a launch configuration or a mixed-instances policy): not supported"
            )
        members = self._members(group)
        standbys = [i for i in members if i != record.holder]
        if record.holder not in members or not standbys:
            raise StepFailed(
                f"group {group_name} has no standby beside the leader {record.holder} "
                f"(in service: {', '.join(members) or 'none'}): add one first"
            )
        plan = _Plan(
            group_name, group["LaunchTemplate"], record.holder, standbys, self._types(members)
        )
        plan.eip = self._eip()
        return plan

    def _launch_template(self, plan: _Plan) -> str:
        ec2 = self._client("ec2")
        spec = plan.template
        version = spec.get("Version", "$Default")
        ref = {"LaunchTemplateId": spec["LaunchTemplateId"]}
        current = ec2.describe_launch_template_versions(**ref, Versions=[version])[
            "LaunchTemplateVersions"
        ][0]
        data = current["LaunchTemplateData"]
        if data.get("InstanceType") == self.settings.instance_type:
            return f"version {current['VersionNumber']} launches {data['InstanceType']} already"
        made = ec2.create_launch_template_version(
            **ref,
            SourceVersion=str(current["VersionNumber"]),
            VersionDescription=f"spectra aws resize to {self.settings.instance_type}",
            LaunchTemplateData={**data, "InstanceType": self.settings.instance_type},
        )["LaunchTemplateVersion"]
        number = str(made["VersionNumber"])
        self._client("autoscaling").update_auto_scaling_group(
            AutoScalingGroupName=plan.group, LaunchTemplate={**ref, "Version": number}
        )
        self._undo = (
            f"group {plan.group} launches {spec['LaunchTemplateId']} version {number} "
            f"({self.settings.instance_type}); it launched {version} before "
            f"(UpdateAutoScalingGroup LaunchTemplate Version={version} puts it back)"
        )
        return (
            f"{spec['LaunchTemplateId']} version {number} ({self.settings.instance_type}, "
            f"from version {current['VersionNumber']} {data.get('InstanceType')}); "
            f"group {plan.group} launches it"
        )

    def _replace(self, plan: _Plan, old: str, leader: str) -> str:
        new = self.replacer.replace(plan.group, old)
        self._new = new
        kind = self._types([new]).get(new)
        if kind != self.settings.instance_type:
            raise StepFailed(
                f"the replacement {new} of {old} is a {kind}, not a {self.settings.instance_type}"
            )
        detail = self._wait(
            f"{new} did not become a healthy standby of {leader} with its conntrack sync caught up",
            lambda: self._standby_ready(new, leader),
            self.settings.standby_timeout_s,
        )
        self._detail = f"{old} -> {new} ({kind}): {detail}"
        return new

    def _handover(self, plan: _Plan, to: str) -> str:
        s = self.settings
        client = self._client("dynamodb")
        now = time.time()
        try:
            request_handover(
                client, s.lease_table, s.az, holder=plan.leader, to=to,
                until=now + s.handover_timeout_s, now=now,
            )  # fmt: skip
        except LeaseError as exc:
            raise StepFailed(str(exc)) from exc
        started = time.monotonic()

        def leading() -> str | None:
            record = read_record(client, s.lease_table, s.az)
            aws = (self.status.state(to) or {}).get("aws") or {}
            takeover = aws.get("takeover") or {}
            if record is None or record.holder != to or aws.get("role") != "leader":
                return None
            if not takeover.get("ok") or takeover.get("token") != record.token:
                return None
            taken = [
                e["at"]
                for e in (aws.get("lease") or {}).get("events", [])
                if e.get("token") == record.token and e.get("kind") == "took_over"
            ]
            lease = f"lease taken {taken[-1] - now:.2f}s after the request, " if taken else ""
            return f"token {record.token}, {lease}takeover {takeover.get('seconds')}s"

        detail = self._wait(
            f"{to} did not lead (the request lapses: {plan.leader} or another may lead again)",
            leading,
            s.handover_timeout_s,
        )
        self._detail = f"{plan.leader} -> {to} in {time.monotonic() - started:.1f}s: {detail}"
        return to

    def _verify(self, plan: _Plan) -> str:
        group = self._group(plan.group)
        members = self._members(group)
        types = self._types(members)
        wrong = {i: t for i, t in types.items() if t != self.settings.instance_type}
        if wrong:
            raise StepFailed(f"instances not of the type: {wrong}")
        eip = self._eip()
        if plan.eip is not None:
            if eip is None or eip.get("PublicIp") != plan.eip.get("PublicIp"):
                raise StepFailed(f"the Elastic IP changed: {plan.eip} -> {eip}")
            if eip.get("InstanceId") not in members:
                raise StepFailed(f"the Elastic IP is on {eip.get('InstanceId')}, outside {members}")
        where = "" if eip is None else f"; Elastic IP {eip['PublicIp']} on {eip.get('InstanceId')}"
        return f"{', '.join(members)}: {self.settings.instance_type}{where}"

    # -- what the steps share ------------------------------------------------------------

    def _standby_ready(self, new: str, leader: str) -> str | None:
        state = self.status.state(new)
        if state is None:
            why = getattr(self.status, "last_error", None)
            self._last = f"{new} reports no state" + (f" ({why})" if why else "")
            return None
        aws = state.get("aws") or {}
        lease = aws.get("lease") or {}
        sync = state.get("conntrack_sync") or {}
        leading = ((self.status.state(leader) or {}).get("conntrack_sync") or {}).get(
            "internal_cache_entries"
        )
        external = sync.get("external_cache_entries")
        self._last = (
            f"{new}: role {aws.get('role')}, lease {lease.get('state')} (leader "
            f"{lease.get('leader')}), sync running {sync.get('running')}, external cache "
            f"{external} of the leader's {leading}"
        )
        if lease.get("leader") not in (leader, None):
            raise StepFailed(
                f"the lease moved from {leader} to {lease.get('leader')} without a hand-over "
                "(a failover during the step)"
            )
        if aws.get("role") != "standby" or lease.get("state") != "standby":
            return None
        if lease.get("leader") != leader:
            return None
        if not sync.get("enabled"):
            return "standby; conntrack sync is not configured: flows will not survive"
        if not sync.get("running") or external is None:
            return None
        if leading and external < self.settings.sync_ratio * leading:
            return None
        return f"standby; conntrack sync holds {external} of the leader's {leading} flows"

    def _wait(self, failure: str, ready: Callable[[], str | None], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                done = ready()
            except (ClientError, BotoCoreError) as exc:
                done, failure = None, f"{failure} (last error: {describe_error(exc)})"
            if done is not None:
                return done
            if time.monotonic() >= deadline:
                last = f" (last seen: {self._last})" if self._last else ""
                raise StepFailed(f"{failure} within {timeout:g}s{last}")
            time.sleep(self.settings.poll_s)

    def _client(self, service: str) -> Any:
        return self.sessions.client(service)

    def _check_type(self) -> None:
        try:
            self._client("ec2").describe_instance_types(InstanceTypes=[self.settings.instance_type])
        except ClientError as exc:
            raise ResizeError(
                f"--instance-type: {self.settings.instance_type!r} is not an EC2 instance type "
                f"offered here ({describe_error(exc)})"
            ) from exc

    def _group(self, name: str) -> dict[str, Any]:
        groups = self._client("autoscaling").describe_auto_scaling_groups(
            AutoScalingGroupNames=[name]
        )["AutoScalingGroups"]
        if not groups:
            raise StepFailed(f"Auto Scaling group {name} does not exist")
        group: dict[str, Any] = groups[0]
        return group

    @staticmethod
    def _members(group: dict[str, Any]) -> list[str]:
        return [
            i["InstanceId"] for i in group.get("Instances", []) if i["LifecycleState"] not in GONE
        ]

    def _types(self, ids: list[str]) -> dict[str, str]:
        if not ids:
            return {}
        found = self._client("ec2").describe_instances(InstanceIds=ids)["Reservations"]
        return {i["InstanceId"]: i["InstanceType"] for r in found for i in r["Instances"]}

    def _eip(self) -> dict[str, Any] | None:
        allocation = self.settings.elastic_ip_allocation_id
        if allocation is None:
            return None
        found = self._client("ec2").describe_addresses(AllocationIds=[allocation])["Addresses"]
        return dict(found[0]) if found else None

    def _az_now(self) -> list[dict[str, Any]]:
        """Each instance of the AZ's group as it is: id, type, role (best effort)."""
        try:
            record = read_record(
                self._client("dynamodb"), self.settings.lease_table, self.settings.az
            )
            leader = record.holder if record else None
            asg = self._client("autoscaling")
            found = asg.describe_auto_scaling_instances(InstanceIds=[leader] if leader else [])
            groups = {i["AutoScalingGroupName"] for i in found["AutoScalingInstances"]}
            members = [m for g in groups for m in self._members(self._group(g))]
            types = self._types(members)
        except (ClientError, BotoCoreError, StepFailed, LeaseError, RoleInert):
            return []
        return [{"instance_id": i, "type": types.get(i), "leader": i == leader} for i in members]

    def _step(self, name: str, action: Callable[[], Any], instance_id: str | None = None) -> Any:
        started = time.monotonic()
        self._detail = self._new = self._last = None
        try:
            result = action()
        except (StepFailed, ResizeError, LeaseError, RoleInert, StatusUntrusted) as exc:
            self._fail(name, str(exc), started, instance_id)
        except (ClientError, BotoCoreError) as exc:
            self._fail(name, describe_error(exc), started, instance_id)
        detail = self._detail or (result if isinstance(result, str) else "")
        if name == "plan":
            detail = (
                f"group {result.group}: leader {result.leader} ({result.types[result.leader]}), "
                f"standbys {', '.join(f'{i} ({result.types[i]})' for i in result.standbys)}"
            )
        self._record(Step(name, "ok", detail, time.monotonic() - started, instance_id, self._new))
        return result

    def _skip(self, name: str, why: str) -> None:
        self._record(Step(name, "skipped", why, 0.0))

    def _record(self, step: Step) -> None:
        self.report.steps.append(step)
        log.info("resize %s: %s %s %s", self.settings.az, step.name, step.state, step.detail)
        self.on_step(step)

    def _fail(self, name: str, reason: str, started: float, instance_id: str | None) -> None:
        done = [s.name for s in self.report.steps if s.state == "ok"]
        untouched = {
            "plan": "nothing was changed",
            "launch_template": "no instance was replaced",
            "replace_standby": "the leader was not touched",
            "handover": "the former leader was not replaced",
            "replace_leader": "the new leader leads",
            "verify": "every replacement is done",
        }[name]
        reason = f"{reason}; {untouched} (steps done: {', '.join(done) or 'none'})"
        if self._undo is not None:
            reason = f"{reason}; {self._undo}"
        self._record(
            Step(name, "failed", reason, time.monotonic() - started, instance_id, self._new)
        )
        self.report.error, self.report.failed_step = reason, name
        self.report.az_now = self._az_now()
        raise ResizeAborted(self.report)
