"""The one AWS session factory every AWS call of the product goes through.

Two identities, never mixed:

* the **instance role** (the EC2 instance profile: whatever the base session holds) is
  used only for what the instance does for itself: boot (reading the config document,
  describing its own interfaces), leader election (the DynamoDB lease), its Elastic IP
  and NAT address, the lifecycle hook, source/dest check of its primary interface.
  :meth:`SessionFactory.instance_client` hands out clients for those services, and a
  guard refuses any operation outside :data:`INSTANCE_OPERATIONS` before it is sent.
* the **operational role** ``arn:<partition>:iam::<account>:role/<name>``, assumed with
  the document's external ID (STS AssumeRole, "Using an external ID" in the IAM user
  guide): everything else (config writes, route tables, Bedrock, SNS, ELBv2, ACM,
  CloudWatch, ...).  :meth:`SessionFactory.client` returns clients whose only credential
  source is that AssumeRole; botocore refreshes the credentials before they expire
  (advisory refresh 15 min, mandatory 10 min before).  When the role is not configured,
  not deployed or refuses us, :meth:`~SessionFactory.client` raises :class:`RoleInert`
  naming the reason; the feature reports itself inert in its status.  There is no
  fallback to the instance role.  After a refusal the factory waits ``retry_s`` before
  it asks STS again, so an inert feature does not hammer STS.

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
    """Clients for the instance role and the operational role (see the module doc).

    ``base`` is the instance's own session (default: boto3's default chain, which on EC2
    is the instance profile); ``now`` is the clock the credential refresh compares the
    expiry with (tests move it)."""

    def __init__(
        self,
        region: str,
        endpoint_url: str | None = None,
        *,
        endpoints: Mapping[str, str] | None = None,
        base: boto3.Session | None = None,
        role: OperationalRole | None = None,
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
        self._operational: boto3.Session | None = None
        self._inert: str | None = None if role else NOT_CONFIGURED
        self._retry_at = 0.0
        self._assumed: tuple[str, str] | None = None  # (arn, expiry)

    # -- instance role -----------------------------------------------------------------

    def instance_client(self, service: str, timeouts: Timeouts | None = None) -> Any:
        """A client with the instance's own credentials, for :data:`INSTANCE_OPERATIONS`."""
        if service not in INSTANCE_OPERATIONS:
            raise InstanceRoleRefused(
                f"the instance role is not used for {service!r}: expected one of "
                f"{sorted(INSTANCE_OPERATIONS)}, or the operational role (client())"
            )
        return self._cached("instance", service, self._base, timeouts or self._timeouts)

    # -- operational role --------------------------------------------------------------

    @property
    def role(self) -> OperationalRole | None:
        return self._role

    def configure(self, role: OperationalRole | None) -> None:
        """Use ``role`` from now on (``None``: no operational role; every client inert)."""
        with self._lock:
            if role == self._role:
                return
            self._role = role
            self._operational = None
            self._clients = {k: v for k, v in self._clients.items() if k[0] == "instance"}
            self._assumed = None
            self._retry_at = 0.0
            self._inert = None if role else NOT_CONFIGURED

    def client(self, service: str, timeouts: Timeouts | None = None) -> Any:
        """A client with the operational role's credentials; :class:`RoleInert` if none."""
        return self._cached(
            "operational", service, self.operational_session(), timeouts or self._timeouts
        )

    def credentials(self) -> Credentials:
        """The operational role's (refreshing) credentials, for callers that sign requests
        themselves (the AI gateway's Bedrock provider); :class:`RoleInert` if none."""
        found = self.operational_session().get_credentials()
        if found is None:  # pragma: no cover - our resolver always answers or raises
            raise RoleInert("the operational session has no credentials")
        return found

    def inert_reason(self) -> str | None:
        """Why the operational role is not usable now (``None``: usable or not tried)."""
        with self._lock:
            return self._inert

    def operational_session(self) -> boto3.Session:
        """The boto3 session of the operational role, assuming it on first use."""
        with self._lock:
            if self._operational is not None:
                return self._operational
            if self._inert is not None and (
                self._role is None or self._monotonic() < self._retry_at
            ):
                raise RoleInert(self._inert)
        with self._assume_lock:
            with self._lock:
                if self._operational is not None:
                    return self._operational
            core = botocore.session.Session()
            core.register_component(
                "credential_provider", CredentialResolver([_AssumeRole(self._fetch, self._now)])
            )
            core.get_credentials()  # assume now: an unusable role is reported at once
            session = boto3.Session(botocore_session=core, region_name=self.region)
            with self._lock:
                self._operational = session
            return session

    def role_arn(self) -> str:
        """The operational role's ARN (the account defaults to the caller's own)."""
        role = self._role
        if role is None:
            raise RoleInert(NOT_CONFIGURED)
        account = role.account_id or self._account()
        partition = self._base.get_partition_for_region(self.region)
        return f"arn:{partition}:iam::{account}:role/{role.name}"

    def status(self) -> dict[str, Any]:
        """The operational role's state and the last error of each failing operation."""
        with self._lock:
            role, inert, assumed = self._role, self._inert, self._assumed
            errors = dict(self._errors)
        out: dict[str, Any] = {"region": self.region, "endpoint_url": self.endpoint_url}
        if role is None or inert is not None:
            out["operational_role"] = {
                "state": "inert",
                "role": role.name if role else None,
                "reason": inert or NOT_CONFIGURED,
            }
        elif assumed is not None:
            arn, expires = assumed
            out["operational_role"] = {"state": "assumed", "arn": arn, "expires": expires}
        else:
            out["operational_role"] = {"state": "not assumed yet", "role": role.name}
        out["errors"] = errors
        return out

    # -- internals ---------------------------------------------------------------------

    def _account(self) -> str:
        try:
            return str(self.instance_client("sts").get_caller_identity()["Account"])
        except (ClientError, BotoCoreError) as exc:
            raise self._refused(f"cannot tell the account: {describe_error(exc)}") from exc

    def _refused(self, reason: str) -> RoleInert:
        with self._lock:
            self._inert = reason
            self._retry_at = self._monotonic() + self._retry_s
            self._operational = None
            self._assumed = None
        log.error("operational role inert: %s", reason)
        return RoleInert(reason)

    def _trust_hint(self, role: OperationalRole) -> str:
        need = "sts:ExternalId (aws.operational_role.external_id)"
        if role.organization_id:
            need += f" and aws:PrincipalOrgID {role.organization_id}"
        return f"the role must exist and trust this instance's role with {need}"

    def _fetch(self) -> dict[str, str]:
        role = self._role
        if role is None:
            raise RoleInert(NOT_CONFIGURED)
        arn = self.role_arn()
        try:
            creds = self.instance_client("sts").assume_role(
                RoleArn=arn,
                RoleSessionName=role.session_name,
                DurationSeconds=ROLE_SESSION_SECONDS,
                ExternalId=role.external_id,
            )["Credentials"]
        except (ClientError, BotoCoreError) as exc:
            raise self._refused(
                f"cannot assume {arn}: {describe_error(exc)}; {self._trust_hint(role)}"
            ) from exc
        expiry = creds["Expiration"]
        with self._lock:
            self._inert = None
            self._assumed = (arn, expiry.isoformat())
        log.info("assumed %s until %s", arn, expiry.isoformat())
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
            "expiry_time": expiry.isoformat(),
        }

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
            events.register(f"after-call.{service}", self._record(identity))
            events.register(f"after-call-error.{service}", self._record(identity))
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
