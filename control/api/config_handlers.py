"""Handlers of ``/v1/config``: read, write (PUT / merge-PATCH), history, rollback, dry run.

Writes are optimistic: PUT names its base version (``If-Match`` or ``version``), PATCH
names it in ``If-Match``; a stale base gets 409.  Secrets come back masked; sending the
mask back means "keep the stored value at this path".  An invalid document gets 422
with path-level errors and nothing is stored.  Every write is logged and recorded in the
store (who, when, what changed). A PUT or PATCH document is also rendered by every
converge step before it is stored (:func:`control.steps.dry_run`), so what no instance
could apply (an unsupported inspection rule, an impossible GWLB hook) is a 422 too,
naming the field. A rollback stores an earlier version's content as it is, without
rendering it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from control.api.auth import Principal
from control.api.bodies import check_object, etag, if_match, invalid, json_body
from control.api.errors import ApiError
from control.api.patch import merge_patch
from control.api.state import METRICS, STORE, call_store, current_tokens
from control.config import (
    MASK,
    SECRET_FIELDS,
    ConfigDocument,
    ConfigValidationError,
    FieldError,
    diff_documents,
    dump_document,
    parse_document,
)
from control.config.issues import Loc, format_path
from control.config.secrets import get_at, set_at
from control.steps import Plan, RenderError, dry_run
from control.steps.nftables import guard_addresses
from control.store.base import StoreError, VersionConflict, VersionNotFound

log = logging.getLogger("spectra.control")

PRINCIPAL = web.RequestKey("principal", Principal)
PLACEHOLDER_OUTSIDE = ("192.0.2.1",)


def _principal(request: web.Request) -> Principal:
    return request[PRINCIPAL]


def _masked_paths(data: Any, loc: Loc = ()) -> list[Loc]:
    found: list[Loc] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if key in SECRET_FIELDS and value == MASK:
                found.append((*loc, key))
            else:
                found += _masked_paths(value, (*loc, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += _masked_paths(value, (*loc, i))
    return found


def restore_masked(data: dict[str, Any], base: ConfigDocument | None) -> dict[str, Any]:
    """``data`` with every masked secret replaced by the stored value at the same path."""
    paths = _masked_paths(data)
    if not paths:
        return data
    stored = dump_document(base, reveal_secrets=True) if base else {}
    errors: list[FieldError] = []
    for path in paths:
        try:
            set_at(data, path, get_at(stored, path))
        except (KeyError, IndexError, TypeError):
            errors.append(
                FieldError(
                    path=format_path(path),
                    value=MASK,
                    message="masked secret with no stored value at this path; send the value",
                )
            )
    if errors:
        raise invalid(errors)
    return data


async def _base_document(request: web.Request, version: int) -> ConfigDocument | None:
    if version == 0:
        return None
    try:
        return await call_store(request.app, request.app[STORE].get, version)
    except VersionNotFound:
        head = await call_store(request.app, request.app[STORE].head)
        raise ApiError(
            409,
            f"version {version} is not the current version {head}",
            {"expected": version, "current": head},
        ) from None


def _render(doc: ConfigDocument, outside: tuple[str, ...] = PLACEHOLDER_OUTSIDE) -> Plan:
    """Every step's render of ``doc``; what no instance could apply is a 422."""
    try:
        return dry_run(doc, outside)
    except RenderError as exc:
        raise invalid([FieldError(path=exc.path, value=None, message=exc.message)]) from None


def _validate(data: dict[str, Any], request: web.Request) -> ConfigDocument:
    try:
        doc = parse_document(data)
        _render(doc)
    except ConfigValidationError as exc:
        request.app[METRICS].writes["invalid"] += 1
        raise invalid(exc.errors) from None
    except ApiError:
        request.app[METRICS].writes["invalid"] += 1
        raise
    return doc


def _changes(old: ConfigDocument | None, new: ConfigDocument) -> list[dict[str, Any]]:
    before = dump_document(old, reveal_secrets=True) if old else {}
    after = dump_document(new, reveal_secrets=True)
    return [c.as_dict() for c in diff_documents(before, after, SECRET_FIELDS)]


async def _commit(
    request: web.Request, doc: ConfigDocument, base: ConfigDocument | None, expected: int
) -> web.Response:
    version, changes = await store_document(request, doc, base, expected)
    return web.json_response({"version": version, "changes": changes}, headers=etag(version))


async def store_document(
    request: web.Request, doc: ConfigDocument, base: ConfigDocument | None, expected: int
) -> tuple[int, list[dict[str, Any]]]:
    """Store ``doc`` as the successor of version ``expected`` (409 when it is not the
    newest): the new version and its changes against ``base``."""
    store = request.app[STORE]
    who = _principal(request).name
    try:
        version = await call_store(request.app, store.put, doc, expected, who)
    except VersionConflict as exc:
        request.app[METRICS].writes["conflict"] += 1
        raise ApiError(409, str(exc), {"expected": exc.expected, "current": exc.current}) from None
    request.app[METRICS].writes["committed"] += 1
    changes = _changes(base, doc)
    log.info("config version %d written by %s: %d changes", version, who, len(changes))
    await current_tokens(request.app, force=True)
    return version, changes


async def edit_document(
    request: web.Request, edit: Callable[[ConfigDocument, dict[str, Any]], None]
) -> tuple[int, list[dict[str, Any]]]:
    """A write that changes part of the document the caller read (``If-Match``):
    ``edit(base, data)`` changes ``data`` (the base version, secrets revealed) in place;
    the result is validated and rendered like a PUT and stored as the next version."""
    expected = if_match(request)
    if expected is None:
        raise ApiError(428, 'this write needs the base version in an If-Match: "<version>" header')
    base = await _base_document(request, expected)
    if base is None:
        raise ApiError(
            409,
            "nothing to change: the store is empty; PUT a document first",
            {"expected": expected, "current": 0},
        )
    data = dump_document(base, reveal_secrets=True)
    edit(base, data)
    return await store_document(request, _validate(data, request), base, expected)


async def get_config(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        version, doc = await call_store(request.app, store.latest)
    except VersionNotFound:
        raise ApiError(404, "no config document has been written yet") from None
    return web.json_response(
        {"version": version, "document": dump_document(doc)}, headers=etag(version)
    )


async def put_config(request: web.Request) -> web.Response:
    body = await json_body(request)
    check_object(body, {"version": int, "document": dict}, {"document"})
    header, field = if_match(request), body.get("version")
    if header is not None and field is not None and header != field:
        raise ApiError(400, f"If-Match {header} and version {field} disagree")
    expected = header if header is not None else field
    if expected is None:
        raise ApiError(
            428, 'PUT needs the base version: an If-Match: "<version>" header or "version"'
        )
    base = await _base_document(request, expected)
    doc = _validate(restore_masked(body["document"], base), request)
    return await _commit(request, doc, base, expected)


async def patch_config(request: web.Request) -> web.Response:
    expected = if_match(request)
    if expected is None:
        raise ApiError(428, 'PATCH needs the base version in an If-Match: "<version>" header')
    patch = await json_body(request)
    if not isinstance(patch, dict):
        raise invalid(
            [FieldError(path="(body)", value=None, message="expected a JSON merge patch object")]
        )
    base = await _base_document(request, expected)
    if base is None:
        raise ApiError(
            409,
            "nothing to patch: the store is empty; PUT a document first",
            {"expected": expected, "current": 0},
        )
    merged = merge_patch(dump_document(base, reveal_secrets=True), restore_masked(patch, base))
    doc = _validate(merged, request)
    return await _commit(request, doc, base, expected)


async def list_versions(request: web.Request) -> web.Response:
    raw = request.query.get("limit", "100")
    if not raw.isdigit() or not 1 <= int(raw) <= 1000:
        raise ApiError(400, f"limit={raw!r}: expected an integer 1..1000")
    infos = await call_store(request.app, request.app[STORE].versions, int(raw))
    return web.json_response({"versions": [i.as_dict() for i in infos]})


def _version_param(request: web.Request) -> int:
    raw = request.match_info["version"]
    if not raw.isdigit() or len(raw) > 12:
        raise ApiError(400, f"version {raw!r}: expected a positive integer")
    return int(raw)


async def get_version(request: web.Request) -> web.Response:
    version = _version_param(request)
    store = request.app[STORE]
    try:
        info = await call_store(request.app, store.info, version)
        doc = await call_store(request.app, store.get, version)
    except VersionNotFound:
        raise ApiError(404, f"config version {version} does not exist") from None
    return web.json_response(
        {"version": version, "info": info.as_dict(), "document": dump_document(doc)},
        headers=etag(version),
    )


async def rollback(request: web.Request) -> web.Response:
    body = await json_body(request)
    check_object(body, {"to_version": int, "version": int}, {"to_version"})
    store = request.app[STORE]
    who = _principal(request).name
    expected = body.get("version")
    try:
        target = await call_store(request.app, store.get, body["to_version"])
        head = await call_store(request.app, store.head) if expected is None else expected
        base = await _base_document(request, head)
        version = await call_store(request.app, store.rollback, body["to_version"], who, head)
    except VersionNotFound as exc:
        raise ApiError(404, str(exc)) from None
    except VersionConflict as exc:
        request.app[METRICS].writes["conflict"] += 1
        raise ApiError(409, str(exc), {"expected": exc.expected, "current": exc.current}) from None
    request.app[METRICS].writes["committed"] += 1
    log.info("config rolled back to version %d as %d by %s", body["to_version"], version, who)
    await current_tokens(request.app, force=True)
    return web.json_response(
        {"version": version, "changes": _changes(base, target)}, headers=etag(version)
    )


async def validate(request: web.Request) -> web.Response:
    body = await json_body(request)
    check_object(body, {"document": dict, "version": int, "outside_addresses": list}, {"document"})
    store = request.app[STORE]
    base_version = body.get("version")
    if base_version is None:
        base_version = await call_store(request.app, store.head)
    try:
        base = await call_store(request.app, store.get, base_version) if base_version else None
    except VersionNotFound:
        raise ApiError(404, f"config version {base_version} does not exist") from None
    try:
        doc = parse_document(restore_masked(body["document"], base))
    except ConfigValidationError as exc:
        return web.json_response({"valid": False, "errors": exc.errors})
    addresses = tuple(str(a) for a in body.get("outside_addresses") or PLACEHOLDER_OUTSIDE)
    try:
        plan = dry_run(doc, addresses)
        used = guard_addresses(doc, addresses)
    except RenderError as exc:
        error = FieldError(path=exc.path, value=None, message=exc.message)
        return web.json_response({"valid": False, "errors": [error]})
    except ValueError as exc:
        raise invalid(
            [
                FieldError(
                    path="outside_addresses", value=None, message=f"expected IPv4 addresses: {exc}"
                )
            ],
            "invalid request body",
        ) from None
    return web.json_response(
        {
            "valid": True,
            "errors": [],
            "base_version": base_version,
            "changes": _changes(base, doc),
            "nftables": plan.parts["nftables"],
            "outside_addresses": used,
        }
    )


def handle_store_errors(exc: StoreError) -> ApiError:
    """A store failure other than a conflict or a missing version: 503."""
    return ApiError(503, f"config store unavailable: {exc}")
