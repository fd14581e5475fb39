"""The semantic-cache contract the gateway codes against: the hit record and the
``SemanticCache`` Protocol (implemented by ``ai.semcache``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class SemanticHit:
    entry_id: str
    similarity: float
    matched_text: str


class SemanticCache(Protocol):
    async def lookup(self, partition: str, text: str) -> SemanticHit | None: ...
    async def add(self, partition: str, text: str, entry_id: str) -> None: ...
