"""STS's trust-policy check, played in front of moto (which assumes any role it is asked).

:func:`trust_judge` is a judge for :class:`tests.fakes.awsfault.FaultProxy`: an
``AssumeRole`` is answered ``AccessDenied`` (as STS does, "Troubleshooting IAM roles" in
the IAM user guide) unless the role exists in moto's IAM and one ``Allow`` statement of
its trust policy names the caller as an AWS principal with ``sts:AssumeRole`` and every
``StringEquals`` condition holds (``sts:ExternalId`` against the request,
``aws:PrincipalOrgID`` against the caller's organization).  Other condition operators are
not modelled and deny.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from botocore.exceptions import ClientError

from tests.fakes.awsfault import Fault, Judge


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _allows(statement: dict[str, Any], caller: str, context: dict[str, str | None]) -> bool:
    if statement.get("Effect") != "Allow":
        return False
    if "sts:AssumeRole" not in _listed(statement.get("Action", [])):
        return False
    principal = statement.get("Principal", {})
    if not isinstance(principal, dict) or caller not in _listed(principal.get("AWS", [])):
        return False
    for operator, checks in statement.get("Condition", {}).items():
        if operator != "StringEquals":
            return False
        for key, wanted in checks.items():
            if context.get(key) not in _listed(wanted):
                return False
    return True


def trust_judge(iam: Any, caller_arn: str, organization_id: str | None = None) -> Judge:
    """Deny AssumeRole as STS would for ``caller_arn`` (in ``organization_id``)."""

    def judge(service: str, action: str, form: dict[str, list[str]]) -> Fault | None:
        if (service, action) != ("sts", "AssumeRole"):
            return None
        arn = form["RoleArn"][0]
        external = (form.get("ExternalId") or [None])[0]
        denied = Fault(
            "sts",
            "AssumeRole",
            "AccessDenied",
            403,
            f"User: {caller_arn} is not authorized to perform: sts:AssumeRole on resource: {arn}",
        )
        try:
            trust = iam.get_role(RoleName=arn.rsplit("/", 1)[-1])["Role"]
        except ClientError:
            return denied
        policy = trust["AssumeRolePolicyDocument"]
        if isinstance(policy, str):
            policy = json.loads(urllib.parse.unquote(policy))
        context = {"sts:ExternalId": external, "aws:PrincipalOrgID": organization_id}
        if any(_allows(s, caller_arn, context) for s in _listed(policy["Statement"])):
            return None
        return denied

    return judge
