"""The ``aws`` section of the config document: region, role, leader lease, notifications.

Every field reaches :func:`control.aws.build`, which hands it to the session factory
(:mod:`control.aws.session`), the leader lease (:mod:`control.aws.lease`), the takeover
notifier (:mod:`control.aws.notify`) or the cross-AZ fallback (:mod:`control.aws.fallback`).
The operational roles are the ones the
deployment's CloudFormation stack (``deploy/cloudformation/operational-roles.yaml``)
creates, one per feature, ``<name>-cross-account-role<N>``: ``deployment`` names them by
the deployment ``name``; the older ``operational_role`` names one role every feature
uses, and wins when both are set (an explicit role is the more specific statement: a
document that had it keeps working unchanged when ``deployment`` is added to stage change
sets).  Their trust policies hold the external ID and, when set, an
``aws:PrincipalOrgID`` condition.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from control.config.issues import Issue, Issues
from control.config.types import StrictModel

_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
_ROLE_RE = re.compile(r"^[\w+=,.@-]{1,64}$")
_DEPLOYMENT_RE = re.compile(r"^[\w+=,.@-]{1,44}$")
_EXTERNAL_ID_RE = re.compile(r"^[\w+=,.@:/-]{2,1224}$")
_ORG_RE = re.compile(r"^o-[a-z0-9]{10,32}$")
_TABLE_RE = re.compile(r"^[A-Za-z0-9_.-]{3,255}$")
_SNS_ARN_RE = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")
_URL_RE = re.compile(r"^https?://[^\s/]+(/[^\s]*)?$")
_ACCOUNT_RE = re.compile(r"^\d{12}$")


def _matching(pattern: re.Pattern[str], accepted: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"expected {accepted}")
        return value

    return AfterValidator(check)


Region = Annotated[str, _matching(_REGION_RE, "an AWS region name like eu-west-1")]
RoleName = Annotated[str, _matching(_ROLE_RE, "an IAM role name: 1-64 letters, digits and +=,.@_-")]
DeploymentName = Annotated[
    str,
    _matching(
        _DEPLOYMENT_RE,
        "a deployment name: 1-44 letters, digits and +=,.@_- (role names add 20 characters)",
    ),
]
ExternalId = Annotated[
    str, _matching(_EXTERNAL_ID_RE, "an STS external ID: 2-1224 letters, digits and +=,.@:/_-")
]
OrganizationId = Annotated[str, _matching(_ORG_RE, "an AWS Organizations ID like o-a1b2c3d4e5")]
TableName = Annotated[
    str, _matching(_TABLE_RE, "a DynamoDB table name: 3-255 letters, digits and _.-")
]
SnsTopicArn = Annotated[
    str, _matching(_SNS_ARN_RE, "an SNS topic ARN like arn:aws:sns:eu-west-1:123456789012:name")
]
AccountId = Annotated[str, _matching(_ACCOUNT_RE, "a 12-digit AWS account ID")]
EndpointUrl = Annotated[
    str, _matching(_URL_RE, "an http(s) URL like http://127.0.0.1:5000 (the lab's moto server)")
]


class OperationalRole(StrictModel):
    """The role every operational AWS call assumes (never the instance role)."""

    name: RoleName = Field(description="role name, e.g. <name>-cross-account-role1")
    external_id: ExternalId = Field(description="the external ID the role's trust policy names")
    organization_id: OrganizationId | None = Field(
        default=None, description="the aws:PrincipalOrgID the trust policy requires, if any"
    )
    account_id: AccountId | None = Field(
        default=None,
        description="account of the role (default: the instance's own account)",
    )


class Deployment(StrictModel):
    """The deployment whose operational stack made one role per feature."""

    name: DeploymentName = Field(
        description="the stack's Name parameter; roles are <name>-cross-account-role<N>"
    )
    external_id: ExternalId = Field(description="the external ID the roles' trust policies name")
    organization_id: OrganizationId | None = Field(
        default=None, description="the aws:PrincipalOrgID the trust policies require, if any"
    )
    account_id: AccountId | None = Field(
        default=None, description="account of the roles (default: the instance's own account)"
    )


class Lease(StrictModel):
    """The per-AZ leader lease in DynamoDB (holder, expiry, fencing token)."""

    table: TableName = "spectra-leader-lease"
    renew_interval_s: float = Field(default=1.0, ge=0.2, le=60.0)
    duration_s: float = Field(
        default=2.0,
        ge=1.0,
        le=600.0,
        description="how long a renewal holds: a dead leader's standby waits this long",
    )
    skew_margin_s: float = Field(
        default=0.25,
        ge=0.0,
        le=60.0,
        description="a standby takes over only this long after the expiry (clock skew)",
    )
    fail_back: bool = Field(
        default=False, description="a preferred instance takes the lease back when healthy"
    )
    restart_grace_s: float = Field(
        default=10.0,
        ge=0.0,
        le=300.0,
        description="a standby leaves an expired lease this long to a holder that still "
        "answers on its inside address (its agent restarting); 0 disables",
    )
    health_failures: int = Field(
        default=3, ge=1, le=100, description="consecutive failed health checks to release"
    )
    health_successes: int = Field(
        default=3, ge=1, le=100, description="consecutive passed health checks to be eligible"
    )

    @model_validator(mode="after")
    def _timing(self) -> Lease:
        issues = []
        if self.duration_s < 2 * self.renew_interval_s:
            issues.append(
                Issue(
                    ("duration_s",),
                    self.duration_s,
                    f"expected at least 2 x renew_interval_s ({2 * self.renew_interval_s:g})",
                )
            )
        if self.skew_margin_s >= self.duration_s:
            issues.append(
                Issue(
                    ("skew_margin_s",),
                    self.skew_margin_s,
                    f"expected less than duration_s ({self.duration_s:g})",
                )
            )
        if issues:
            raise Issues(issues)
        return self


class Notify(StrictModel):
    """Where takeover events go besides the log, the status and the counters."""

    sns_topic_arn: SnsTopicArn | None = None


_ZONE_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}[a-z]$")
_ALLOCATION_RE = re.compile(r"^eipalloc-[0-9a-f]{8,17}$")
_RTB_RE = re.compile(r"^rtb-[0-9a-f]{8,17}$")
_HOOK_RE = re.compile(r"^[A-Za-z0-9_./-]{1,255}$")
_TARGET_RE = re.compile(r"^[A-Za-z0-9.-]{1,253}:\d{1,5}$")

ZoneName = Annotated[str, _matching(_ZONE_RE, "an Availability Zone name like eu-west-1a")]
AllocationId = Annotated[
    str, _matching(_ALLOCATION_RE, "an Elastic IP allocation ID like eipalloc-0123abcd")
]
RouteTableId = Annotated[str, _matching(_RTB_RE, "a route table ID like rtb-0123abcd")]
HookName = Annotated[str, _matching(_HOOK_RE, "a lifecycle hook name: 1-255 of A-Za-z0-9_./-")]
ProbeTarget = Annotated[str, _matching(_TARGET_RE, "host:port, like 198.51.100.10:80")]


def _address_target(value: str) -> str:
    host, _, port = value.rpartition(":")
    try:
        IPv4Address(host)
        ok = port.isdigit() and 1 <= int(port) <= 65535
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            "expected IPv4-address:port, like 198.51.100.10:443 (port 1-65535; not a "
            "name: the probe resolves nothing)"
        )
    return value


AddressTarget = Annotated[str, AfterValidator(_address_target)]


def _slash30(net: IPv4Network) -> IPv4Network:
    if net.prefixlen != 30:
        raise ValueError(
            f"expected a /30 (the gateway's end and the probe's), got /{net.prefixlen}"
        )
    return net


class Zone(StrictModel):
    """What the leader of one Availability Zone holds and moves on takeover."""

    nat_address: IPv4Address = Field(
        description="the secondary private IP of the outside subnet that flows are "
        "translated to; it moves to the leader's outside ENI"
    )
    elastic_ip_allocation_id: AllocationId | None = Field(
        default=None, description="the Elastic IP associated with nat_address"
    )
    route_tables: list[RouteTableId] = Field(
        default_factory=list,
        max_length=200,
        description="private route tables whose 0.0.0.0/0 goes to the leader's inside ENI",
    )


class Lifecycle(StrictModel):
    """The Auto Scaling lifecycle hooks the instance completes (absent: none)."""

    launch_hook: HookName | None = "spectra-launch"
    termination_hook: HookName | None = "spectra-terminate"
    launch_timeout_s: float = Field(
        default=300.0,
        ge=10.0,
        le=7200.0,
        description="ABANDON the launch when the boot has not passed its health check by then",
    )


class Health(StrictModel):
    """The instance's own data-path check (the lease's eligibility)."""

    probe: ProbeTarget | None = Field(
        default=None,
        description="a TCP host:port reached through the outside interface every interval "
        "(absent: only the local checks: links up, forwarding on, ruleset present)",
    )
    forward_probes: list[AddressTarget] = Field(
        default_factory=list,
        max_length=4,
        description="TCP targets reached *through* the forwarding path (forward chain, "
        "egress policy, source NAT) from a namespace of the agent's own, every interval, "
        "counted on the leader: none answering makes it ineligible (empty: no such probe)",
    )
    probe_subnet: Annotated[IPv4Network, AfterValidator(_slash30)] = Field(
        default=IPv4Network("198.18.255.252/30"),
        description="the /30 of the forward probe's veth pair (the gateway's end first); "
        "it must not be used in the VPC",
    )
    interval_s: float = Field(default=1.0, ge=0.2, le=60.0)
    timeout_s: float = Field(default=1.0, ge=0.05, le=30.0)

    @model_validator(mode="after")
    def _timeout(self) -> Health:
        if self.forward_probes and self.timeout_s > self.interval_s:
            raise Issues([Issue(("timeout_s",), self.timeout_s,
                                f"expected at most interval_s ({self.interval_s}) with "
                                "forward_probes")])  # fmt: skip
        return self


class CrossAzFallback(StrictModel):
    """Off by default: a leader of another AZ routes an AZ that has no healthy gateway.

    When an AZ's lease has been expired for ``after_s`` (its leader is gone and no
    standby took it), the leader of another AZ points that AZ's private route tables at
    its own inside ENI; the AZ's own leader takes them back when it returns. It costs
    cross-AZ data processing ($0.01/GB in each direction) and makes one gateway carry two
    AZs (its failure then takes both down), so enabling it is logged and shown in status.
    """

    enabled: bool = Field(
        default=False,
        description="a leader takes over the private routes of an AZ with no healthy "
        "gateway (cross-AZ traffic: $0.01/GB each way; one gateway carries two AZs)",
    )
    after_s: float = Field(
        default=30.0,
        ge=1.0,
        le=3600.0,
        description="how long an AZ's lease must have been expired, with no standby "
        "taking it, before another AZ's leader takes its routes",
    )


class Aws(StrictModel):
    """How the appliance talks to AWS: region, endpoints, the operational role, the lease."""

    region: Region | None = Field(default=None, description="default: the instance's region")
    endpoint_url: EndpointUrl | None = Field(
        default=None, description="one endpoint for every service (the lab's moto server)"
    )
    deployment: Deployment | None = Field(
        default=None,
        description="one operational role per feature, named after the deployment",
    )
    operational_role: OperationalRole | None = Field(
        default=None,
        description="one role for every feature (wins over deployment); with neither, "
        "every operational feature reports itself inert",
    )
    lease: Lease = Lease()
    notify: Notify = Notify()
    zones: dict[ZoneName, Zone] = Field(
        default_factory=dict,
        description="per Availability Zone: the NAT address, Elastic IP and route tables "
        "its leader takes over (empty: no leader election, no takeover)",
    )
    lifecycle: Lifecycle = Lifecycle()
    health: Health = Health()
    cross_az_fallback: CrossAzFallback = CrossAzFallback()

    @model_validator(mode="after")
    def _zones(self) -> Aws:
        issues = []
        if self.cross_az_fallback.enabled and len(self.zones) < 2:
            issues.append(
                Issue(
                    ("cross_az_fallback", "enabled"),
                    True,
                    f"expected at least two aws.zones to fall back between (has {len(self.zones)})",
                )
            )
        owners: dict[str, str] = {}
        for name, zone in self.zones.items():
            for i, rtb in enumerate(zone.route_tables):
                first = owners.setdefault(rtb, name)
                if first != name:
                    issues.append(
                        Issue(
                            ("zones", name, "route_tables", i),
                            rtb,
                            f"already taken over by zones.{first}: a table has one leader",
                        )
                    )
        if issues:
            raise Issues(issues)
        return self
