"""Reading numbers out of the agents' status documents for the Prometheus collectors:
a status value is exported only when it really is a number (bool as 0/1), and a
section that is missing or of the wrong shape reads as empty."""

from __future__ import annotations

from typing import Any


def number(value: Any) -> float | None:
    """``value`` as a sample value, ``None`` when it is not a number."""
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, int | float) else None


def mapping(value: Any) -> dict[str, Any]:
    """``value`` when it is a dict, else an empty one."""
    return value if isinstance(value, dict) else {}
