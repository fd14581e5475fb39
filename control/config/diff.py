"""Path-level difference of two config documents (the API's dry run, the write log).

Works on plain JSON data (``dump_document(..., reveal_secrets=True)``) so a changed
secret is detected; every value at a secret field is masked in the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from control.config.issues import Loc, format_path
from control.config.secrets import redact

_ABSENT = object()


@dataclass(frozen=True, slots=True)
class Change:
    """One difference: ``op`` at ``path`` from ``old`` to ``new`` (secrets masked)."""

    op: Literal["added", "removed", "changed"]
    path: str
    old: Any = None
    new: Any = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": self.op, "path": self.path}
        if self.op != "added":
            out["old"] = self.old
        if self.op != "removed":
            out["new"] = self.new
        return out


def diff_documents(old: Any, new: Any, secret_names: frozenset[str] = frozenset()) -> list[Change]:
    """Differences from ``old`` to ``new``, in document order; lists compare by index."""
    changes: list[Change] = []
    _walk(old, new, (), changes, secret_names)
    return changes


def _mask(value: Any, loc: Loc, names: frozenset[str]) -> Any:
    key = loc[-1] if loc and isinstance(loc[-1], str) else None
    return redact(value, names, key)


def _walk(old: Any, new: Any, loc: Loc, out: list[Change], names: frozenset[str]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            _walk(old.get(key, _ABSENT), new.get(key, _ABSENT), (*loc, key), out, names)
        return
    if isinstance(old, list) and isinstance(new, list):
        for i in range(max(len(old), len(new))):
            a = old[i] if i < len(old) else _ABSENT
            b = new[i] if i < len(new) else _ABSENT
            _walk(a, b, (*loc, i), out, names)
        return
    if old is _ABSENT:
        out.append(Change("added", format_path(loc), new=_mask(new, loc, names)))
    elif new is _ABSENT:
        out.append(Change("removed", format_path(loc), old=_mask(old, loc, names)))
    elif old != new or type(old) is not type(new):
        out.append(
            Change("changed", format_path(loc), _mask(old, loc, names), _mask(new, loc, names))
        )


def summarize(changes: list[Change], limit: int = 400) -> str:
    """A one-line summary for the version log: ``3 changes: nat.port_range[0], ...``."""
    if not changes:
        return "no changes"
    head = f"{len(changes)} change{'s' if len(changes) != 1 else ''}: "
    text = head + ", ".join(f"{c.op} {c.path}" for c in changes)
    return text if len(text) <= limit else text[: limit - 3] + "..."
