"""Turning pydantic validation errors into path-level errors users can act on.

Shape: ``[{"path": "nat.port_range[1]", "value": 70000, "message": "..."}]``.  The path
uses document field names (pydantic's union-member tags are dropped), the value is the
offending input with secrets masked, and the message says what is accepted.
"""

from __future__ import annotations

from typing import Any, TypedDict

from pydantic import BaseModel, ValidationError

from control.config.issues import Issues, Loc, format_path
from control.config.secrets import _model_classes, redact
from control.config.types import MASK

_ACCEPTED = {
    "ip_v4_network": "expected an IPv4 CIDR like 10.0.0.0/8 with no host bits set",
    "ip_v4_address": "expected an IPv4 address like 192.0.2.1",
}
_TYPE_TAGS = {"str", "int", "float", "bool", "none", "list", "dict"}


class FieldError(TypedDict):
    """One validation error: where, what was given, what is accepted."""

    path: str
    value: Any
    message: str


class ConfigValidationError(ValueError):
    """The config document is invalid; ``errors`` lists every problem by path."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        summary = "; ".join(f"{e['path']}: {e['message']}" for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"invalid config document: {summary}{more}")


def _clean_loc(loc: tuple[str | int, ...]) -> Loc:
    return tuple(p for p in loc if isinstance(p, int) or ("[" not in p and p not in _TYPE_TAGS))


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        inner = _model_classes(field.annotation)
        model = inner[0] if len(inner) == 1 else None
    return model


def _holds_secrets(root: type[BaseModel], loc: Loc, secret_names: frozenset[str]) -> bool:
    parent = _model_at(root, loc)
    return parent is None or bool(secret_names & parent.model_fields.keys())


def _scalar(value: Any, key: Loc, secret_names: frozenset[str]) -> Any:
    if key and isinstance(key[-1], str) and key[-1] in secret_names:
        return MASK
    value = redact(value, secret_names)
    if isinstance(value, BaseModel):
        return None
    return value


def _message(err: Any, root: type[BaseModel], loc: Loc) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _model_at(root, loc[:-1])
        accepted = ", ".join(parent.model_fields) if parent else "none"
        return f"unknown field; accepted fields here: {accepted}"
    if kind == "missing":
        return "required field is missing"
    if kind == "literal_error":
        return f"expected {err['ctx']['expected']}"
    if kind in _ACCEPTED:
        return _ACCEPTED[kind]
    msg: str = err["msg"]
    return msg.removeprefix("Value error, ")


def render_errors(
    exc: ValidationError, root: type[BaseModel], secret_names: frozenset[str]
) -> list[FieldError]:
    """Path-level errors of ``exc`` (raised validating ``root``), secrets masked."""
    merged: dict[str, FieldError] = {}
    for err in exc.errors(include_url=False):
        loc = _clean_loc(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, Issues):
            for issue in cause.issues:
                full = (*loc, *issue.path)
                path = format_path(full)
                merged[path] = FieldError(
                    path=path,
                    value=_scalar(issue.value, full, secret_names),
                    message=issue.message,
                )
            continue
        path = format_path(loc)
        value = None if err["type"] == "missing" else _scalar(err["input"], loc, secret_names)
        if err["type"] == "extra_forbidden" and _holds_secrets(root, loc[:-1], secret_names):
            value = MASK  # a mistyped secret field name must not echo the secret
        message = _message(err, root, loc)
        if path in merged and message not in merged[path]["message"]:
            merged[path]["message"] += f"; or {message}"
        else:
            merged[path] = FieldError(path=path, value=value, message=message)
    return list(merged.values())
