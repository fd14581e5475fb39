"""AWS lifecycle of the appliance: one session factory, IMDSv2, the per-AZ leader lease.

:func:`build` turns the document's ``aws`` section and the instance's metadata into an
:class:`Aws` bundle: the :class:`SessionFactory` (every AWS call goes through it: the
instance role for the instance's own business, the operational role for the rest), the
takeover :class:`Notifier` and the :class:`Lease` constructor.  Nothing here runs at
import time; nothing talks to AWS until a client is used.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from botocore.credentials import Credentials

from control.aws.fallback import CrossAzFallback, FallbackSettings, OtherZone
from control.aws.features import SERVICE_FEATURES, Feature, feature_of, role_name
from control.aws.imds import Imds, ImdsError, InstanceIdentity, Interface
from control.aws.lease import (
    Clock,
    HealthCheck,
    Lease,
    LeaseError,
    LeaseRecord,
    LeaseSettings,
    SystemClock,
)
from control.aws.notify import (
    LeaseEvent,
    MemoryNotifier,
    Notifier,
    NullNotifier,
    SnsNotifier,
)
from control.aws.session import (
    DeploymentRoles,
    InstanceRoleRefused,
    OperationalRole,
    RoleInert,
    Roles,
    SessionFactory,
    Timeouts,
    describe_error,
)
from control.config.aws import Aws as AwsSection

if TYPE_CHECKING:
    from ai.providers.credentials import RefreshingCredentials

__all__ = [
    "SERVICE_FEATURES",
    "Aws",
    "AwsSection",
    "Clock",
    "CrossAzFallback",
    "DeploymentRoles",
    "Feature",
    "HealthCheck",
    "Imds",
    "ImdsError",
    "InstanceIdentity",
    "InstanceRoleRefused",
    "Interface",
    "Lease",
    "LeaseError",
    "LeaseEvent",
    "LeaseRecord",
    "LeaseSettings",
    "MemoryNotifier",
    "Notifier",
    "NullNotifier",
    "OperationalRole",
    "RoleInert",
    "Roles",
    "SectionSessions",
    "SessionFactory",
    "SnsNotifier",
    "SystemClock",
    "Timeouts",
    "anchor_credentials",
    "bedrock_credentials",
    "build",
    "describe_error",
    "feature_of",
    "lease_timeouts",
    "operational_credentials",
    "role_name",
    "roles_of",
]


def lease_timeouts(renew_interval_s: float) -> Timeouts:
    """HTTP limits of the lease's DynamoDB client: a renewal must end within a period."""
    limit = max(0.2, renew_interval_s)
    return Timeouts(connect_s=limit, read_s=limit, max_attempts=2)


@dataclass(frozen=True, slots=True)
class Aws:
    """What :func:`build` made from the ``aws`` section for this instance."""

    section: AwsSection
    identity: InstanceIdentity | None
    sessions: SessionFactory
    notifier: Notifier
    imds: Imds | None = None

    def lease_settings(
        self, *, preferred: bool = False, address: str | None = None
    ) -> LeaseSettings:
        """This instance's lease of its AZ, from ``aws.lease``."""
        if self.identity is None:
            raise LeaseError("the leader lease needs the instance identity (IMDS)")
        cfg = self.section.lease
        return LeaseSettings(
            table=cfg.table,
            key=self.identity.availability_zone,
            holder=self.identity.instance_id,
            renew_interval_s=cfg.renew_interval_s,
            duration_s=cfg.duration_s,
            skew_margin_s=cfg.skew_margin_s,
            fail_back=cfg.fail_back,
            preferred=preferred,
            health_failures=cfg.health_failures,
            health_successes=cfg.health_successes,
            address=address,
            restart_grace_s=cfg.restart_grace_s,
        )

    def lease(
        self,
        health: HealthCheck,
        *,
        preferred: bool = False,
        clock: Clock | None = None,
        address: str | None = None,
        holder_alive: Callable[[str], bool] | None = None,
    ) -> Lease:
        """The AZ's leader lease (instance role, short timeouts) with the notifier;
        ``address`` is this instance's inside IP, where a standby asks ``holder_alive``."""
        settings = self.lease_settings(preferred=preferred, address=address)
        client = self.sessions.instance_client(
            "dynamodb", lease_timeouts(settings.renew_interval_s)
        )
        return Lease(
            client,
            settings,
            health,
            notifier=self.notifier,
            clock=clock,
            holder_alive=holder_alive,
        )

    def fallback(
        self, inside_eni: str, inside_ifname: str, inside_cidr: str, *, clock: Clock | None = None
    ) -> CrossAzFallback | None:
        """The cross-AZ fallback of this instance's leader (``None`` unless
        ``aws.cross_az_fallback.enabled``): the other zones' route tables, the lease
        table through the instance role, the routes through the operational role."""
        cfg = self.section.cross_az_fallback
        if not cfg.enabled:
            return None
        settings = self.lease_settings()
        others = tuple(
            OtherZone(az, tuple(zone.route_tables))
            for az, zone in sorted(self.section.zones.items())
            if az != settings.key
        )
        client = self.sessions.instance_client(
            "dynamodb", lease_timeouts(settings.renew_interval_s)
        )
        sessions = self.sessions
        return CrossAzFallback(
            client,
            FallbackSettings(
                table=settings.table,
                az=settings.key,
                holder=settings.holder,
                inside_eni=inside_eni,
                inside_ifname=inside_ifname,
                inside_router=str(ipaddress.ip_network(inside_cidr, strict=False)[1]),
                after_s=cfg.after_s,
                duration_s=settings.duration_s,
                skew_margin_s=settings.skew_margin_s,
            ),
            others,
            lambda: sessions.client("ec2"),
            notifier=self.notifier,
            clock=clock,
        )

    def status(self) -> dict[str, Any]:
        """For the agent's status file: identity, sessions, notifications, IMDS."""
        ident = self.identity
        return {
            "instance": None
            if ident is None
            else {
                "id": ident.instance_id,
                "availability_zone": ident.availability_zone,
                "region": ident.region,
            },
            "sessions": self.sessions.status(),
            "notify": self.notifier.status(),
            "imds": None if self.imds is None else self.imds.status(),
        }


def build(
    section: AwsSection,
    imds: Imds | InstanceIdentity | None,
    *,
    base: boto3.Session | None = None,
) -> Aws:
    """The AWS bundle of this instance: ``imds`` is read once for the identity (or the
    identity is given; ``None`` off EC2, then ``aws.region`` is required).  ``base`` is
    the instance role's session (default: boto3's default chain, on EC2 the instance
    profile).  Raises :class:`ImdsError` when the metadata cannot be read."""
    identity = imds.identity() if isinstance(imds, Imds) else imds
    region = section.region or (identity.region if identity else None)
    if region is None:
        raise ValueError("aws.region: expected a region when there is no instance metadata")
    sessions = SessionFactory(
        region, section.endpoint_url, base=base, role=roles_of(section, identity)
    )
    topic = section.notify.sns_topic_arn
    notifier: Notifier = (
        NullNotifier() if topic is None else SnsNotifier(topic, lambda: sessions.client("sns"))
    )
    return Aws(section, identity, sessions, notifier, imds if isinstance(imds, Imds) else None)


def roles_of(section: AwsSection, identity: InstanceIdentity | None) -> Roles | None:
    """The operational roles the section names: ``operational_role`` (one role for every
    feature) wins over ``deployment`` (one role per feature); the account defaults to
    the instance's."""
    explicit = section.operational_role
    chosen = explicit or section.deployment
    if chosen is None:
        return None
    kind = OperationalRole if explicit is not None else DeploymentRoles
    home = identity.account_id if identity else None
    return kind(chosen.name, chosen.external_id, chosen.organization_id, chosen.account_id or home)


class SectionSessions:
    """The session factory of a document's ``aws`` section, built on first use and
    rebuilt only when the section changes: for converge steps that call AWS with the
    operational role (the TLS step's ACM export). ``identity`` is the instance's (IMDS;
    ``None`` before it is known or off EC2, then ``aws.region`` is required)."""

    def __init__(
        self,
        identity: Callable[[], InstanceIdentity | None],
        *,
        base: boto3.Session | None = None,
    ) -> None:
        self._identity = identity
        self._base = base
        self._lock = threading.Lock()
        self._built: tuple[AwsSection, InstanceIdentity | None, SessionFactory] | None = None

    def factory(self, section: AwsSection) -> SessionFactory:
        identity = self._identity()
        with self._lock:
            if self._built is None or self._built[:2] != (section, identity):
                sessions = build(section, identity, base=self._base).sessions
                self._built = (section, identity, sessions)
            return self._built[2]

    def client(self, section: AwsSection, service: str) -> Any:
        """An operational client of ``service`` (:class:`RoleInert` without a role)."""
        return self.factory(section).client(service)


def operational_credentials(
    section: AwsSection,
    imds: Callable[[], Imds] = Imds,
    *,
    base: boto3.Session | None = None,
    service: str = "bedrock-runtime",
) -> Callable[[], Credentials]:
    """A credential source for the AI gateway's Bedrock provider: the operational role's
    credentials (never the instance role's), built from ``section`` on first use, so a
    gateway that never calls Bedrock never reads the metadata or calls STS.  Raises
    :class:`RoleInert` (or :class:`ImdsError`) with the reason when there are none."""
    lock = threading.Lock()
    built: list[SessionFactory] = []

    def credentials() -> Credentials:
        with lock:
            if not built:
                identity = None if section.region else imds()
                built.append(build(section, identity, base=base).sessions)
        return built[0].credentials(service)

    return credentials


def anchor_credentials(sessions: SectionSessions, section: AwsSection) -> RefreshingCredentials:
    """The credentials the AI gateway writes its audit anchors to S3 with
    (``ai.audit.anchor_s3``) on an agent run with ``--aws``: the role for ``s3`` from the
    agent's session factory, held and refreshed like :func:`bedrock_credentials`'."""
    from ai.providers.credentials import RefreshingCredentials

    return RefreshingCredentials(
        lambda: sessions.factory(section).credentials("s3"), name="operational role (s3)"
    )


def bedrock_credentials(sessions: SectionSessions, section: AwsSection) -> RefreshingCredentials:
    """The AI gateway's Bedrock credentials on an agent run with ``--aws``: the operational
    role of ``section`` from the agent's own session factory (``sessions``, the one the
    converge steps use, with the instance identity the agent read), held and refreshed on
    a worker thread before they expire (:mod:`ai.providers.credentials`).  Nothing is
    resolved before the first Bedrock request."""
    from ai.providers.credentials import RefreshingCredentials

    return RefreshingCredentials(
        lambda: sessions.factory(section).credentials("bedrock-runtime"), name="operational role"
    )
