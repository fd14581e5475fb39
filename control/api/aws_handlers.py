"""``POST /v1/aws/changesets``: stage a change set of the operational-role stack.

The features the newest config document enables decide the stack's ``Enable<Feature>``
parameters (:mod:`control.aws.changeset`); the body may add the operator's parameters
(the two trusted principals, VPC, SSM prefix) and the stack name.  The gateway only
stages: the operator executes the change set.  Without AWS (the API was not started on
EC2 with ``--aws``), without ``aws.deployment`` or with the core role inert the answer
is 409 with the reason; a change set that would widen a trust policy is 422.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from control.api.bodies import json_body
from control.api.errors import ApiError
from control.api.state import SETTINGS, STORE, call_store
from control.aws.changeset import (
    OPERATOR_PARAMETERS,
    ChangeSetRefused,
    ChangeSetRequest,
    ChangeSetUnavailable,
)
from control.aws.session import RoleInert

UNAVAILABLE = "aws_unavailable"
REFUSED = "change_set_refused"


def _request(body: Any) -> ChangeSetRequest:
    if not isinstance(body, dict):
        raise ApiError(422, "expected a JSON object {stack_name?, parameters?}")
    extra = sorted(set(body) - {"stack_name", "parameters"})
    if extra:
        raise ApiError(422, f"unknown field(s) {', '.join(extra)}: expected stack_name, parameters")
    stack = body.get("stack_name")
    if stack is not None and not isinstance(stack, str):
        raise ApiError(422, "stack_name: expected a string")
    params = body.get("parameters", {})
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        raise ApiError(
            422, f"parameters: expected an object of strings ({', '.join(OPERATOR_PARAMETERS)})"
        )
    return ChangeSetRequest(stack, params)


async def create_changeset(request: web.Request) -> web.Response:
    """Stage a change set for the newest document's features (201), never execute it."""
    wanted = _request(await json_body(request))
    stagers = request.app[SETTINGS].changesets
    if stagers is None:
        raise ApiError(
            409,
            "AWS is not configured for this config API (start it on EC2 with spectra run "
            "--aws) or stage the change set with the operator's credentials",
            code=UNAVAILABLE,
        )
    store = request.app[STORE]
    head = await call_store(request.app, store.head)
    if head == 0:
        raise ApiError(
            409, "no config document yet: nothing to derive features from", code=UNAVAILABLE
        )
    doc = await call_store(request.app, store.get, head)
    try:
        staged = await call_store(request.app, lambda: stagers(doc).stage(doc, wanted))
    except RoleInert as exc:
        raise ApiError(
            409, f"the core operational role is inert: {exc.reason}", code=UNAVAILABLE
        ) from None
    except ChangeSetUnavailable as exc:
        raise ApiError(409, str(exc), code=UNAVAILABLE) from None
    except ChangeSetRefused as exc:
        raise ApiError(422, str(exc), code=REFUSED) from None
    return web.json_response({"config_version": head, "change_set": staged.as_dict()}, status=201)
