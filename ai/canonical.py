"""Canonical JSON of a resolved request, the material of every cache key.

Volatile fields (streaming flags, end-user ids, request ids, metadata) are dropped,
so a streaming and a non-streaming request for the same thing share one entry.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

VOLATILE = frozenset(
    {"stream", "stream_options", "user", "request_id", "metadata", "store", "service_tier"}
)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def resolved_request(body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """The request as it goes upstream, minus volatile fields."""
    out = {k: v for k, v in body.items() if k not in VOLATILE and v is not None}
    out["model"] = upstream_model
    return out


def exact_key(tenant: str, provider: str, resolved: dict[str, Any]) -> str:
    material = canonical_json({"tenant": tenant, "provider": provider, "request": resolved})
    return hashlib.sha256(material.encode()).hexdigest()
