"""Request bodies and version headers shared by the config API's handlers.

``json_body`` reads a JSON body (400 naming the parse error), ``check_object`` checks
its top-level fields against the accepted ones (422 listing every unknown, missing or
mistyped field at once), ``if_match`` reads the base version of a write from
``If-Match`` (400 unless a version number), ``etag`` answers the version written,
``since_param`` reads the ``since`` of the history endpoints. The config, AI, AWS and
status handlers all speak these the same way.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from control.api.errors import ApiError
from control.config import FieldError

MAX_VERSION = 999_999_999_999


async def json_body(request: web.Request) -> Any:
    """The request's body parsed as JSON."""
    raw = await request.read()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not JSON: {exc}") from None


def invalid(errors: list[FieldError], message: str = "invalid config document") -> ApiError:
    """A 422 listing ``errors`` (each names its field)."""
    return ApiError(422, message, {"errors": errors})


def check_object(
    body: Any, allowed: dict[str, type | tuple[type, ...]], required: set[str]
) -> None:
    """``body`` is an object whose fields are among ``allowed`` (name -> accepted types;
    integers 0..MAX_VERSION) and include ``required``; else a 422 naming each field."""
    errors: list[FieldError] = []
    if not isinstance(body, dict):
        raise invalid([FieldError(path="(body)", value=None, message="expected a JSON object")])
    for key, value in body.items():
        kinds = allowed.get(key)
        if kinds is None:
            errors.append(
                FieldError(
                    path=key, value=None, message=f"unknown field; accepted: {sorted(allowed)}"
                )
            )
        elif not isinstance(value, kinds) or (isinstance(value, bool) and kinds is int):
            errors.append(FieldError(path=key, value=None, message=f"wrong type for {key}"))
        elif (
            isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= MAX_VERSION
        ):
            errors.append(
                FieldError(path=key, value=value, message=f"expected an integer 0..{MAX_VERSION}")
            )
    errors += [
        FieldError(path=key, value=None, message="required field is missing")
        for key in sorted(required - body.keys())
    ]
    if errors:
        raise invalid(errors, "invalid request body")


def if_match(request: web.Request) -> int | None:
    """The version ``If-Match`` names (``"3"``, weak or not), None without the header."""
    header = request.headers.get("If-Match")
    if header is None:
        return None
    tag = header.strip().removeprefix("W/").strip('"')
    if not tag.isdigit() or len(tag) > 12:
        raise ApiError(400, f'If-Match {header!r}: expected a config version number like "3"')
    return int(tag)


def etag(version: int) -> dict[str, str]:
    """The ``ETag`` header of ``version``."""
    return {"ETag": f'"{version}"'}


def since_param(request: web.Request) -> float:
    """The ``since`` query parameter (unix seconds, default 0) of a history endpoint."""
    raw = request.query.get("since", "0")
    try:
        since = float(raw)
    except ValueError:
        since = float("nan")
    if since != since:  # not a number, or NaN
        raise ApiError(400, f"since={raw!r}: expected unix seconds, like 1765080000.5")
    return since
