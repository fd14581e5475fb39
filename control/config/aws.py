"""The ``aws`` section of the config document: region, role, leader lease, notifications.

Every field reaches :func:`control.aws.build`, which hands it to the session factory
(:mod:`control.aws.session`), the leader lease (:mod:`control.aws.lease`) or the takeover
notifier (:mod:`control.aws.notify`).  The operational role is the one the deployment's
CloudFormation stack creates (``<name>-cross-account-role<N>``); its trust policy holds
the external ID and, when set, an ``aws:PrincipalOrgID`` condition.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from control.config.issues import Issue, Issues
from control.config.types import StrictModel

_REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
_ROLE_RE = re.compile(r"^[\w+=,.@-]{1,64}$")
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


class Lease(StrictModel):
    """The per-AZ leader lease in DynamoDB (holder, expiry, fencing token)."""

    table: TableName = "spectra-leader-lease"
    renew_interval_s: float = Field(default=1.0, ge=0.2, le=60.0)
    duration_s: float = Field(default=5.0, ge=1.0, le=600.0)
    skew_margin_s: float = Field(
        default=1.0,
        ge=0.0,
        le=60.0,
        description="a standby takes over only this long after the expiry (clock skew)",
    )
    fail_back: bool = Field(
        default=False, description="a preferred instance takes the lease back when healthy"
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


class Aws(StrictModel):
    """How the appliance talks to AWS: region, endpoints, the operational role, the lease."""

    region: Region | None = Field(default=None, description="default: the instance's region")
    endpoint_url: EndpointUrl | None = Field(
        default=None, description="one endpoint for every service (the lab's moto server)"
    )
    operational_role: OperationalRole | None = Field(
        default=None, description="absent: every operational feature reports itself inert"
    )
    lease: Lease = Lease()
    notify: Notify = Notify()
