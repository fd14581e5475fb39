"""The semantic-cache interface the pipeline is written against, and its partitioning.

``ai.semcache`` implements :class:`SemanticCache`; this module fixes the contract and
decides *where* semantic matching may apply: only when everything but the last user
message matches exactly. :func:`partition_key` hashes tenant, provider, model, system
prompt, the history before the last user message, tools and sampling parameters, so
a lookup can only ever find entries of the same tenant and the same conversation
prefix. :func:`semantic_text` says whether a request is eligible at all (no tools or
tool calls, n == 1, a short conversation ending in a plain-text user message).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

from ai.canonical import canonical_json


@dataclass(frozen=True, slots=True)
class SemanticHit:
    """A stored text similar enough to the looked-up one; entry_id is an exact-cache key."""

    entry_id: str
    similarity: float
    matched_text: str


class SemanticCache(Protocol):
    """Nearest-neighbour lookup of last-user-message texts within one partition."""

    async def lookup(self, partition: str, text: str) -> SemanticHit | None: ...

    async def add(self, partition: str, text: str, entry_id: str, tenant: str = "") -> None:
        """Store ``text``; ``tenant`` partitions a shared store (``ai.redis_semcache``)."""


def semantic_text(body: dict[str, Any], max_messages: int) -> str | None:
    """The last user message's text when the request may use the semantic cache."""
    messages = body.get("messages") or []
    if not messages or len(messages) > max_messages:
        return None
    if body.get("tools") or (body.get("n") or 1) > 1:
        return None
    if any(m.get("tool_calls") or m.get("role") == "tool" for m in messages):
        return None
    last = messages[-1]
    if last.get("role") != "user" or not isinstance(last.get("content"), str):
        return None
    return str(last["content"]) or None


def partition_key(tenant: str, provider: str, resolved: dict[str, Any]) -> str:
    """Hash of everything but the last user message (the request must be eligible)."""
    prefix = {k: v for k, v in resolved.items() if k != "messages"}
    prefix["messages"] = resolved["messages"][:-1]
    material = canonical_json({"tenant": tenant, "provider": provider, "request": prefix})
    return hashlib.sha256(material.encode()).hexdigest()
