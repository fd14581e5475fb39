"""Validation issues with exact paths, raised from model validators.

A pydantic model validator reports at the model's own location; cross-field checks
raise :class:`Issues` instead, carrying paths relative to that model, so the rendered
error names the exact field (``nat.outside_addresses[1]``) and its value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Loc = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem: where (relative path), the offending value, what is accepted."""

    path: Loc
    value: Any
    message: str


class Issues(ValueError):
    """One or more cross-field problems found by a model validator."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = issues
        super().__init__("; ".join(f"{format_path(i.path)}: {i.message}" for i in issues))


def fail(path: Loc, value: Any, message: str) -> Issues:
    """An :class:`Issues` with one issue, ready to ``raise``."""
    return Issues([Issue(path, value, message)])


def unique_names(field: str, names: list[str]) -> None:
    """Raise :class:`Issues` naming every repeated entry of ``field`` (a list of named
    items) at its index."""
    seen: set[str] = set()
    issues = []
    for i, name in enumerate(names):
        if name in seen:
            issues.append(Issue((field, i, "name"), name, "duplicate name"))
        seen.add(name)
    if issues:
        raise Issues(issues)


def format_path(loc: Loc) -> str:
    """``("nat", "port_range", 1)`` -> ``nat.port_range[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(document)"
