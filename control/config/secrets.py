"""Finding, masking and re-attaching the secret fields of a config document.

Secrets are :data:`control.config.types.Secret` fields.  The stores keep them apart
(SSM: SecureString parameters); the API shows them masked and accepts the mask back in
a PUT meaning "unchanged"; diffs and errors redact them by field name.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, SecretStr

from control.config.issues import Loc
from control.config.types import MASK


def _model_classes(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _model_classes(arg)
    return found


def _is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_is_secret(a) for a in typing.get_args(annotation))
    return False


def secret_field_names(root: type[BaseModel]) -> frozenset[str]:
    """Names of every secret field reachable from ``root`` (used to redact by name)."""
    names: set[str] = set()
    seen: set[type[BaseModel]] = set()
    todo = [root]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            if _is_secret(field.annotation):
                names.add(name)
            todo += _model_classes(field.annotation)
    return frozenset(names)


def secret_paths(value: Any, prefix: Loc = ()) -> list[Loc]:
    """Paths of every secret value set in a validated document (or part of one)."""
    found: list[Loc] = []
    if isinstance(value, SecretStr):
        found.append(prefix)
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            found += secret_paths(getattr(value, name), (*prefix, name))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found += secret_paths(item, (*prefix, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            found += secret_paths(item, (*prefix, str(key)))
    return found


def get_at(data: Any, loc: Loc) -> Any:
    """The value at ``loc`` in plain JSON data; KeyError/IndexError if absent."""
    for part in loc:
        data = data[part]
    return data


def set_at(data: Any, loc: Loc, value: Any) -> None:
    """Replace the value at ``loc`` in plain JSON data."""
    get_at(data, loc[:-1])[loc[-1]] = value


def redact(value: Any, names: frozenset[str], key: str | None = None) -> Any:
    """``value`` with every member named in ``names`` replaced by the mask."""
    if key is not None and key in names and value is not None:
        return MASK
    if isinstance(value, dict):
        return {k: redact(v, names, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, names) for v in value]
    return value
