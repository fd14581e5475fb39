"""Permission updates as CloudFormation change sets of the operational-role stack.

The gateway never edits IAM itself.  When the config document turns a feature on or off
(:func:`control.aws.features.enabled_features`), :class:`ChangeSetStager` stages a change
set of the operational stack (``deploy/cloudformation/operational-roles.yaml``) whose
``Enable<Feature>`` parameters follow the document; the operator reviews and executes it
("Updating stacks using change sets" in the CloudFormation user guide).  Before
``CreateChangeSet`` the template is rendered with the change set's parameters and every
role's trust policy is checked: only ``sts:AssumeRole``, only the instance role and the
CloudFormation handler role as principals (``InstanceRoleArn``, ``HandlerRoleArn``),
always with the document's ``sts:ExternalId``.  A stack already deployed keeps its
principals: a change set naming others is refused, as is any template whose trust
would reach further.  Change sets are created with the caller's credentials: on the
appliance the core role's (its policy allows CreateChangeSet on this stack only).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from control.aws.features import Feature, enabled_features
from control.aws.session import describe_error
from control.aws.template import (
    TEMPLATE_PATH,
    Pseudo,
    RenderedRole,
    TemplateError,
    load,
    parameter_values,
    render,
)

if TYPE_CHECKING:
    import boto3

    from control.aws.imds import InstanceIdentity
    from control.aws.session import SessionFactory
    from control.config.aws import Aws as AwsSection
    from control.config.document import ConfigDocument

log = logging.getLogger("spectra.aws")

PRINCIPAL_PARAMETERS = ("InstanceRoleArn", "HandlerRoleArn")
OPERATOR_PARAMETERS = (*PRINCIPAL_PARAMETERS, "VpcId", "ConfigParameterPrefix")
"""Stack parameters the document does not hold: given with the request, or kept from the
deployed stack.  Every other parameter follows the document."""

_ROLE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_STACK_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,127}$")
_DONE = ("CREATE_COMPLETE", "FAILED", "DELETE_COMPLETE", "DELETE_FAILED")


class ChangeSetUnavailable(RuntimeError):
    """A change set cannot be staged here now (no AWS, no deployment, role inert)."""


class ChangeSetRefused(ValueError):
    """The change set would widen who may assume the roles, or its input is wrong."""


def stack_name_for(deployment: str) -> str:
    """The operational stack's default name: ``<deployment>-operational-roles``."""
    return f"{deployment}-operational-roles"


def log_bucket(doc: ConfigDocument) -> str:
    """The S3 bucket a shipping log names (``""`` when none ships to S3)."""
    for logs in (doc.logging.flow_logs, doc.logging.firewall_logs):
        if logs.ships() and logs.s3_bucket:
            return logs.s3_bucket
    return ""


def document_parameters(doc: ConfigDocument) -> dict[str, str]:
    """The stack parameters the document decides: name, external ID, organization, the
    features it enables, the metrics namespace, the takeover topic, the bucket flow and
    firewall logs are shipped to (the flow log's when both name one) and the AI audit
    anchors' bucket."""
    deployment = doc.aws.deployment
    if deployment is None:
        raise ChangeSetUnavailable(
            "aws.deployment is not set: a change set needs the deployment name and "
            "external ID of the operational stack"
        )
    on = enabled_features(doc)
    params = {
        "Name": deployment.name,
        "ExternalId": deployment.external_id,
        "OrganizationId": deployment.organization_id or "",
        "MetricsNamespace": doc.metrics.cloudwatch_namespace,
        "NotifyTopicArn": doc.aws.notify.sns_topic_arn or "",
        "LogBucket": log_bucket(doc),
        "AuditAnchorBucket": anchor.bucket if (anchor := doc.ai.audit.anchor_s3) else "",
    }
    for feature in Feature:
        params[feature.parameter] = "true" if feature in on else "false"
    return params


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def check_trust(roles: list[RenderedRole], principals: set[str], external_id: str) -> None:
    """Raise :class:`ChangeSetRefused` unless every role trusts only ``principals``, only
    for ``sts:AssumeRole``, only with ``external_id``."""
    for role in roles:
        for i, statement in enumerate(_listed(role.trust.get("Statement", []))):
            where = f"{role.name} trust statement {i}"
            if "NotPrincipal" in statement or "NotAction" in statement:
                raise ChangeSetRefused(f"{where}: NotPrincipal/NotAction would widen the trust")
            if statement.get("Effect") != "Allow":
                continue  # a Deny narrows
            actions = _listed(statement.get("Action", []))
            if actions != ["sts:AssumeRole"]:
                raise ChangeSetRefused(f"{where}: allows {actions}; only sts:AssumeRole")
            principal = statement.get("Principal")
            if not isinstance(principal, dict) or set(principal) != {"AWS"}:
                raise ChangeSetRefused(
                    f"{where}: principal {principal!r}; only the AWS roles "
                    f"{sorted(principals)} may assume it"
                )
            extra = sorted(set(_listed(principal["AWS"])) - principals)
            if extra:
                raise ChangeSetRefused(
                    f"{where}: would trust {', '.join(map(str, extra))} beyond the two "
                    f"principals {sorted(principals)}"
                )
            equals = statement.get("Condition", {}).get("StringEquals", {})
            if equals.get("sts:ExternalId") != external_id:
                raise ChangeSetRefused(f"{where}: does not require the sts:ExternalId")


@dataclass(frozen=True, slots=True)
class ChangeSetRequest:
    """What the caller adds to the document: the stack name and operator parameters."""

    stack_name: str | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StagedChangeSet:
    """A change set waiting for the operator to execute it."""

    stack_name: str
    change_set_name: str
    change_set_id: str
    change_set_type: str
    status: str
    status_reason: str
    features: tuple[str, ...]
    parameters: dict[str, str]
    changes: tuple[dict[str, Any], ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "stack_name": self.stack_name,
            "change_set_name": self.change_set_name,
            "change_set_id": self.change_set_id,
            "change_set_type": self.change_set_type,
            "status": self.status,
            "status_reason": self.status_reason,
            "features": list(self.features),
            "parameters": dict(self.parameters),
            "changes": list(self.changes),
            "execute": "aws cloudformation execute-change-set --stack-name "
            f"{self.stack_name} --change-set-name {self.change_set_name}",
        }


class ChangeSetStager:
    """Stages change sets with ``cloudformation`` (a boto3 client) from ``template``."""

    def __init__(
        self,
        cloudformation: Any,
        template: Path = TEMPLATE_PATH,
        *,
        wait_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._cfn = cloudformation
        self._template = template
        self._wait_s = wait_s
        self._sleep = sleep

    def stage(self, doc: ConfigDocument, request: ChangeSetRequest) -> StagedChangeSet:
        """Check, then CreateChangeSet; :class:`ChangeSetRefused` or
        :class:`ChangeSetUnavailable` with the reason, nothing staged."""
        derived = document_parameters(doc)
        stack = request.stack_name or stack_name_for(derived["Name"])
        if not _STACK_RE.match(stack):
            raise ChangeSetRefused(
                f"stack_name {stack!r}: expected a letter then letters, digits and -"
            )
        unknown = sorted(set(request.parameters) - set(OPERATOR_PARAMETERS))
        if unknown:
            raise ChangeSetRefused(
                f"parameters: {', '.join(unknown)} not accepted (the document decides them); "
                f"accepted: {', '.join(OPERATOR_PARAMETERS)}"
            )
        text, template = load(self._template)
        deployed = self._deployed(stack)
        given: dict[str, str] = dict(derived)
        for key in OPERATOR_PARAMETERS:
            value = request.parameters.get(key, (deployed or {}).get(key))
            if value is not None:
                given[key] = value
        self._check_principals(given, deployed)
        try:
            values = parameter_values(template, given)
            roles = render(template, values, Pseudo(region=self._region(), stack_name=stack))
        except TemplateError as exc:
            raise ChangeSetRefused(str(exc)) from exc
        principals = {values[k] for k in PRINCIPAL_PARAMETERS if values[k]}
        check_trust(roles, principals, values["ExternalId"])
        kind = "UPDATE" if deployed is not None else "CREATE"
        name = f"spectra-{time.strftime('%Y%m%d%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
        try:
            made = self._cfn.create_change_set(
                StackName=stack,
                ChangeSetName=name,
                ChangeSetType=kind,
                TemplateBody=text,
                Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in values.items()],
                Capabilities=["CAPABILITY_NAMED_IAM"],
                Description="Cloud Spectra Gateway: operational roles for the enabled features",
            )
            described = self._settled(stack, made["Id"])
        except (ClientError, BotoCoreError) as exc:
            raise ChangeSetUnavailable(f"CloudFormation: {describe_error(exc)}") from exc
        features = tuple(f.label for f in Feature if values[f.parameter] == "true")
        log.info("staged change set %s of %s (features %s)", name, stack, ", ".join(features))
        return StagedChangeSet(
            stack,
            name,
            str(made["Id"]),
            kind,
            str(described.get("Status", "")),
            str(described.get("StatusReason", "")),
            features,
            values,
            tuple(described.get("Changes", [])),
        )

    def _region(self) -> str:
        return str(self._cfn.meta.region_name)

    def _deployed(self, stack: str) -> dict[str, str] | None:
        """The deployed stack's parameters; ``None`` when there is none to update."""
        try:
            found = self._cfn.describe_stacks(StackName=stack)["Stacks"]
        except ClientError as exc:
            if "does not exist" in describe_error(exc):
                return None
            raise ChangeSetUnavailable(f"CloudFormation: {describe_error(exc)}") from exc
        except BotoCoreError as exc:
            raise ChangeSetUnavailable(f"CloudFormation: {describe_error(exc)}") from exc
        if not found or found[0].get("StackStatus") == "REVIEW_IN_PROGRESS":
            return None  # only staged so far: the next change set creates it again
        return {p["ParameterKey"]: p["ParameterValue"] for p in found[0].get("Parameters", [])}

    @staticmethod
    def _check_principals(given: Mapping[str, str], deployed: Mapping[str, str] | None) -> None:
        instance = given.get("InstanceRoleArn")
        if not instance:
            raise ChangeSetRefused(
                "parameters.InstanceRoleArn: the stack is not deployed yet; name the "
                "instance role (arn:aws:iam::<account>:role/<name>)"
            )
        for key in PRINCIPAL_PARAMETERS:
            value = given.get(key, "")
            if value and not _ROLE_ARN_RE.match(value):
                raise ChangeSetRefused(
                    f"parameters.{key} {value!r}: expected a role ARN "
                    "(arn:aws:iam::<account>:role/<name>); accounts, users and * are refused"
                )
            if deployed is not None and value != deployed.get(key, ""):
                raise ChangeSetRefused(
                    f"parameters.{key}: the deployed stack trusts {deployed.get(key)!r}; a "
                    f"change set does not change who may assume the roles (got {value!r}); "
                    "update the stack's principals yourself"
                )

    def _settled(self, stack: str, change_set_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + self._wait_s
        while True:
            found: dict[str, Any] = self._cfn.describe_change_set(
                ChangeSetName=change_set_id, StackName=stack
            )
            if found.get("Status") in _DONE or time.monotonic() >= deadline:
                return found
            self._sleep(1.0)


def stagers_from(
    identity: Callable[[], InstanceIdentity | None], *, base: boto3.Session | None = None
) -> Callable[[ConfigDocument], ChangeSetStager]:
    """On the appliance: a stager whose CloudFormation client is the core role's, from the
    document's ``aws`` section (the session factory is rebuilt when the section changes).
    Raises :class:`~control.aws.session.RoleInert` when the core role is not usable."""
    from control.aws import build

    lock = threading.Lock()
    built: list[tuple[AwsSection, SessionFactory]] = []

    def stager(doc: ConfigDocument) -> ChangeSetStager:
        document_parameters(doc)  # no deployment: say so before any role is assumed
        with lock:
            if not built or built[0][0] != doc.aws:
                try:
                    sessions = build(doc.aws, identity(), base=base).sessions
                except ValueError as exc:
                    raise ChangeSetUnavailable(str(exc)) from exc
                built[:] = [(doc.aws, sessions)]
            sessions = built[0][1]
        return ChangeSetStager(sessions.client("cloudformation"))

    return stager
