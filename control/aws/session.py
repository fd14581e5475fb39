"""The one AWS session factory every AWS call of the product goes through.

Two identities, never mixed:

* the **instance role** (the EC2 instance profile: whatever the base session holds) is
  used only for what the instance does for itself: boot (reading the config document,
  describing its own interfaces), leader election (the DynamoDB lease), its Elastic IP
  and NAT address, the lifecycle hook, source/dest check of its primary interface.
  :meth:`SessionFactory.instance_client` hands out clients for those services, and a
  guard refuses any operation outside :data:`INSTANCE_OPERATIONS` before it is sent.
* the **operational roles**, assumed with the document's external ID (STS AssumeRole,
  "Using an external ID" in the IAM user guide): everything else (config writes, route
  tables, Bedrock, SNS, ELBv2, ACM, CloudWatch, ...).  Which role a client's service
  uses is the feature table :data:`control.aws.features.SERVICE_FEATURES`: with
  :class:`DeploymentRoles` (``aws.deployment``) each feature has its own role
  ``arn:<partition>:iam::<account>:role/<name>-cross-account-role<N>``; with one
  explicit :class:`OperationalRole` (``aws.operational_role``, the older form) every
  feature uses that role.  :meth:`SessionFactory.client` returns clients whose only
  credential source is that AssumeRole; botocore refreshes the credentials before they
  expire (advisory refresh 15 min, mandatory 10 min before).  When a feature's role is
  not configured, not deployed or refuses us, :meth:`~SessionFactory.client` raises
  :class:`RoleInert` naming the reason; that feature reports itself inert in
  ``status()["features"]`` while the other features keep working.  There is no
  fallback to the instance role.  After a refusal the factory waits ``retry_s`` before
  it asks STS for that role again, so an inert feature does not hammer STS.

Clients are cached per identity and service; ``region`` and the endpoint overrides apply
to every client (the lab and the tests point them at a moto server).  Retries are
botocore's ``standard`` mode ("Retry behavior" in the AWS SDKs and Tools reference):
exponential backoff with full jitter on throttling and transient errors, ``max_attempts``
tries in all.  The last error of every operation is kept until the same operation
succeeds, so ``status()`` names a call that is denied while the others keep working.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import (
    CredentialProvider,
    CredentialResolver,
    Credentials,
    RefreshableCredentials,
)
from botocore.exceptions import BotoCoreError, ClientError

from control.aws.features import Feature, feature_of, role_name

log = logging.getLogger("spectra.aws")

INSTANCE_OPERATIONS: Mapping[str, tuple[str, ...]] = {
    "sts": ("GetCallerIdentity", "AssumeRole"),
    "ssm": ("GetParameter", "GetParameters", "GetParametersByPath"),
    # TransactWriteItems: the cross-AZ fallback claim (IAM: UpdateItem + ConditionCheckItem)
    "dynamodb": ("GetItem", "PutItem", "UpdateItem", "TransactWriteItems", "DescribeTable"),
    "ec2": (
        "Describe*",
        "AssociateAddress",
        "AssignPrivateIpAddresses",
        "UnassignPrivateIpAddresses",
        "ModifyNetworkInterfaceAttribute",
    ),
    "autoscaling": (
        "CompleteLifecycleAction",
        "RecordLifecycleActionHeartbeat",
        "DescribeAutoScalingInstances",
    ),
}
"""What the instance role may call; everything else needs the operational role."""

ROLE_SESSION_SECONDS = 3600
RETRY_INERT_SECONDS = 30.0
NOT_CONFIGURED = "no operational role configured (aws.operational_role)"


class RoleInert(Exception):
    """The operational role cannot be used; ``reason`` says why, for status."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InstanceRoleRefused(ValueError):
    """An operation the instance role is not used for was asked of the instance role."""


@dataclass(frozen=True, slots=True)
class OperationalRole:
    """Which role to assume: ``name`` in ``account_id`` (default: the instance's account)."""

    name: str
    external_id: str
    organization_id: str | None = None
    account_id: str | None = None
    session_name: str = "spectra"


@dataclass(frozen=True, slots=True)
class DeploymentRoles:
    """One role per feature, ``<name>-cross-account-role<N>`` in ``account_id`` (default:
    the instance's account), all trusting the same external ID."""

    name: str
    external_id: str
    organization_id: str | None = None
    account_id: str | None = None
    session_name: str = "spectra"

    def for_feature(self, feature: Feature) -> OperationalRole:
        return OperationalRole(
            role_name(self.name, feature),
            self.external_id,
            self.organization_id,
            self.account_id,
            self.session_name,
        )


Roles = OperationalRole | DeploymentRoles


@dataclass(slots=True)
class _RoleState:
    """What the factory knows of one operational role (guarded by the factory's lock)."""

    role: OperationalRole
    session: boto3.Session | None = None
    inert: str | None = None
    retry_at: float = 0.0
    assumed: tuple[str, str] | None = None  # (arn, expiry)

    def view(self) -> dict[str, Any]:
        if self.inert is not None:
            return {"state": "inert", "role": self.role.name, "reason": self.inert}
        if self.assumed is not None:
            arn, expires = self.assumed
            return {"state": "assumed", "arn": arn, "expires": expires}
        return {"state": "not assumed yet", "role": self.role.name}


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-client HTTP limits: latency-bound callers (the lease) want them short."""

    connect_s: float = 5.0
    read_s: float = 30.0
    max_attempts: int = 5


DEFAULT_TIMEOUTS = Timeouts()


def describe_error(exc: BaseException) -> str:
    """``<Operation>: <Code>: <message>`` for a botocore error, for status and logs."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        op = getattr(exc, "operation_name", "call")
        return f"{op}: {err.get('Code', 'Error')}: {err.get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


def error_code(exc: BaseException) -> str:
    """The AWS error code of a :class:`ClientError` (``""`` for anything else)."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _local_now() -> datetime:
    return datetime.now(UTC)


class _AssumeRole(CredentialProvider):
    METHOD = "spectra-assume-role"

    def __init__(self, fetch: Callable[[], dict[str, str]], now: Callable[[], datetime]) -> None:
        super().__init__()
        self._fetch = fetch
        self._now = now

    def load(self) -> RefreshableCredentials:
        meta = self._fetch()
        return RefreshableCredentials(
            meta["access_key"],
            meta["secret_key"],
            meta["token"],
            datetime.fromisoformat(meta["expiry_time"]),
            self._fetch,
            self.METHOD,
            time_fetcher=self._now,
        )


class SessionFactory:
    """Clients for the instance role and the operational roles (see the module doc).

    ``base`` is the instance's own session (default: boto3's default chain, which on EC2
    is the instance profile); ``role`` one explicit role for every feature or one role
    per feature (:class:`DeploymentRoles`); ``now`` is the clock the credential refresh
    compares the expiry with (tests move it)."""

    def __init__(
        self,
        region: str,
        endpoint_url: str | None = None,
        *,
        endpoints: Mapping[str, str] | None = None,
        base: boto3.Session | None = None,
        role: Roles | None = None,
        max_attempts: int = 5,
        retry_s: float = RETRY_INERT_SECONDS,
        now: Callable[[], datetime] = _local_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.region = region
        self.endpoint_url = endpoint_url
        self._endpoints = dict(endpoints or {})
        self._base = base or boto3.Session(region_name=region)
        self._timeouts = Timeouts(max_attempts=max_attempts)
        self._retry_s = retry_s
        self._now = now
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._assume_lock = threading.Lock()
        self._clients: dict[tuple[str, str, Timeouts], Any] = {}
        self._errors: dict[str, str] = {}
        self._role = role
        self._states: dict[str, _RoleState] = {}

    # -- instance role -----------------------------------------------------------------

    def instance_client(self, service: str, timeouts: Timeouts | None = None) -> Any:
        """A client with the instance's own credentials, for :data:`INSTANCE_OPERATIONS`."""
        if service not in INSTANCE_OPERATIONS:
            raise InstanceRoleRefused(
                f"the instance role is not used for {service!r}: expected one of "
                f"{sorted(INSTANCE_OPERATIONS)}, or the operational role (client())"
            )
        return self._cached("instance", service, self._base, timeouts or self._timeouts)

    # -- operational roles -------------------------------------------------------------

    @property
    def role(self) -> Roles | None:
        return self._role

    def configure(self, role: Roles | None) -> None:
        """Use ``role`` from now on (``None``: no operational role; every client inert)."""
        with self._lock:
            if role == self._role:
                return
            self._role = role
            self._states = {}
            self._clients = {k: v for k, v in self._clients.items() if k[0] == "instance"}

    def role_for(self, feature: Feature) -> OperationalRole | None:
        """The role ``feature`` assumes (``None``: no operational role configured)."""
        role = self._role
        if isinstance(role, DeploymentRoles):
            return role.for_feature(feature)
        return role

    def client(self, service: str, timeouts: Timeouts | None = None) -> Any:
        """A client with the credentials of the role of ``service``'s feature;
        :class:`RoleInert` if that role is not usable."""
        feature = feature_of(service)
        session = self.operational_session(feature)
        role = self.role_for(feature)
        assert role is not None  # operational_session raised otherwise
        return self._cached(
            f"operational {role.name}", service, session, timeouts or self._timeouts
        )

    def credentials(self, service: str = "bedrock-runtime") -> Credentials:
        """The (refreshing) credentials of ``service``'s role, for callers that sign
        requests themselves (the AI gateway's Bedrock provider); :class:`RoleInert` if
        none."""
        found = self.operational_session(feature_of(service)).get_credentials()
        if found is None:  # pragma: no cover - our resolver always answers or raises
            raise RoleInert("the operational session has no credentials")
        return found

    def inert_reason(self, feature: Feature = Feature.CORE) -> str | None:
        """Why ``feature``'s role is not usable now (``None``: usable or not tried)."""
        role = self.role_for(feature)
        if role is None:
            return NOT_CONFIGURED
        with self._lock:
            state = self._states.get(role.name)
            return None if state is None else state.inert

    def operational_session(self, feature: Feature = Feature.CORE) -> boto3.Session:
        """The boto3 session of ``feature``'s role, assuming it on first use."""
        role = self.role_for(feature)
        if role is None:
            raise RoleInert(NOT_CONFIGURED)
        with self._lock:
            state = self._states.setdefault(role.name, _RoleState(role))
            if state.session is not None:
                return state.session
            if state.inert is not None and self._monotonic() < state.retry_at:
                raise RoleInert(state.inert)
        with self._assume_lock:
            with self._lock:
                if state.session is not None:
                    return state.session
            core = botocore.session.Session()
            fetch = self._fetcher(state, feature)
            core.register_component(
                "credential_provider", CredentialResolver([_AssumeRole(fetch, self._now)])
            )
            core.get_credentials()  # assume now: an unusable role is reported at once
            session = boto3.Session(botocore_session=core, region_name=self.region)
            with self._lock:
                state.session = session
            return session

    def role_arn(self, feature: Feature = Feature.CORE) -> str:
        """The ARN of ``feature``'s role (the account defaults to the caller's own)."""
        role = self.role_for(feature)
        if role is None:
            raise RoleInert(NOT_CONFIGURED)
        return self._arn(role)

    def status(self) -> dict[str, Any]:
        """The roles' state per feature and the last error of each failing operation."""
        role = self._role
        with self._lock:
            states = dict(self._states)
            views = {name: state.view() for name, state in states.items()}
            errors = dict(self._errors)
        out: dict[str, Any] = {"region": self.region, "endpoint_url": self.endpoint_url}
        features: dict[str, Any] = {}
        for feature in Feature:
            found = self.role_for(feature)
            if found is None:
                features[feature.label] = {"state": "inert", "role": None, "reason": NOT_CONFIGURED}
            else:
                features[feature.label] = views.get(
                    found.name, {"state": "not assumed yet", "role": found.name}
                )
        if role is None:
            out["operational_role"] = features[Feature.CORE.label]
        elif isinstance(role, OperationalRole):
            out["operational_role"] = views.get(
                role.name, {"state": "not assumed yet", "role": role.name}
            )
        else:
            out["operational_role"] = {"state": "one role per feature", "deployment": role.name}
        out["features"] = features
        out["errors"] = errors
        return out

    # -- internals ---------------------------------------------------------------------

    def _arn(self, role: OperationalRole) -> str:
        account = role.account_id or self._account()
        partition = self._base.get_partition_for_region(self.region)
        return f"arn:{partition}:iam::{account}:role/{role.name}"

    def _account(self) -> str:
        try:
            return str(self.instance_client("sts").get_caller_identity()["Account"])
        except (ClientError, BotoCoreError) as exc:
            raise RoleInert(f"cannot tell the account: {describe_error(exc)}") from exc

    def _refused(self, state: _RoleState, reason: str) -> RoleInert:
        with self._lock:
            state.inert = reason
            state.retry_at = self._monotonic() + self._retry_s
            state.session = None
            state.assumed = None
        log.error("operational role %s inert: %s", state.role.name, reason)
        return RoleInert(reason)

    def _trust_hint(self, role: OperationalRole, feature: Feature) -> str:
        need = "sts:ExternalId (the document's external_id)"
        if role.organization_id:
            need += f" and aws:PrincipalOrgID {role.organization_id}"
        where = (
            f"the operational stack creates it when {feature.parameter} is true; "
            if isinstance(self._role, DeploymentRoles)
            else ""
        )
        return f"{where}the role must exist and trust this instance's role with {need}"

    def _fetcher(self, state: _RoleState, feature: Feature) -> Callable[[], dict[str, str]]:
        def fetch() -> dict[str, str]:
            role = state.role
            try:
                arn = self._arn(role)
            except RoleInert as exc:
                raise self._refused(state, exc.reason) from exc
            try:
                creds = self.instance_client("sts").assume_role(
                    RoleArn=arn,
                    RoleSessionName=role.session_name,
                    DurationSeconds=ROLE_SESSION_SECONDS,
                    ExternalId=role.external_id,
                )["Credentials"]
            except (ClientError, BotoCoreError) as exc:
                raise self._refused(
                    state,
                    f"cannot assume {arn} ({feature.label}): {describe_error(exc)}; "
                    f"{self._trust_hint(role, feature)}",
                ) from exc
            expiry = creds["Expiration"]
            with self._lock:
                state.inert = None
                state.assumed = (arn, expiry.isoformat())
            log.info("assumed %s for %s until %s", arn, feature.label, expiry.isoformat())
            return {
                "access_key": creds["AccessKeyId"],
                "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"],
                "expiry_time": expiry.isoformat(),
            }

        return fetch

    def _cached(
        self, identity: str, service: str, session: boto3.Session, timeouts: Timeouts
    ) -> Any:
        key = (identity, service, timeouts)
        with self._lock:
            found = self._clients.get(key)
            if found is not None:
                return found
            config = Config(
                connect_timeout=timeouts.connect_s,
                read_timeout=timeouts.read_s,
                retries={"mode": "standard", "total_max_attempts": timeouts.max_attempts},
            )
            found = session.client(
                service,  # type: ignore[call-overload]
                region_name=self.region,
                endpoint_url=self._endpoints.get(service, self.endpoint_url),
                config=config,
            )
            events = found.meta.events
            if identity == "instance":
                events.register(f"before-parameter-build.{service}", self._guard)
            label = identity.split(" ", 1)[0]  # errors are named per identity kind
            events.register(f"after-call.{service}", self._record(label))
            events.register(f"after-call-error.{service}", self._record(label))
            self._clients[key] = found
            return found

    def _guard(self, model: Any, **_: Any) -> None:
        service = model.service_model.service_name
        allowed = INSTANCE_OPERATIONS.get(service, ())
        if not any(fnmatch.fnmatchcase(model.name, pattern) for pattern in allowed):
            raise InstanceRoleRefused(
                f"{service}.{model.name} is not done with the instance role: expected one of "
                f"{', '.join(allowed)}; use the operational role (client())"
            )

    def _record(self, identity: str) -> Callable[..., None]:
        def record(event_name: str, **kwargs: Any) -> None:
            _, service, operation = event_name.split(".", 2)
            key = f"{identity} {service}.{operation}"
            exc = kwargs.get("exception")
            parsed = kwargs.get("parsed") or {}
            status = getattr(kwargs.get("http_response"), "status_code", 200)
            if exc is not None:
                message = f"{type(exc).__name__}: {exc}"
            elif status >= 300 and "Error" in parsed:
                err = parsed["Error"]
                message = f"{err.get('Code', status)}: {err.get('Message', '')}".rstrip(": ")
            else:
                with self._lock:
                    self._errors.pop(key, None)
                return
            with self._lock:
                self._errors[key] = message

        return record
