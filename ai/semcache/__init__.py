"""Semantic cache of the AI gateway.

The gateway hashes everything but the last user message into a partition (tenant,
provider, model, system prompt, history, tools, parameters) and asks this package whether a
near-identical last message was answered before. Matching is a local MiniLM embedding
(onnxruntime, no network), brute-force cosine per partition, a threshold and guard
checks (numbers, names, negations, question words, opposite words and the roles
of words around "to", "from", "than", operator and currency symbols must agree).
``python -m perf semcache`` measures the shipped configuration on labelled pairs.

Importing the package costs nothing: its names load on first use (the agent reads
:mod:`ai.semcache.config` through the document model and must not pay for numpy).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ai.semcache.cache import SemanticCacheImpl, UnknownEmbedder, create_semantic_cache
    from ai.semcache.config import GuardConfig, SemCacheConfig
    from ai.semcache.embedder import EMBEDDERS, Embedder, MiniLMEmbedder, ModelFileError
    from ai.semcache.guards import Guard, check
    from ai.semcache.index import PartitionIndex
    from ai.semcache_api import SemanticCache, SemanticHit

_HOME = {
    "SemanticCacheImpl": "ai.semcache.cache",
    "UnknownEmbedder": "ai.semcache.cache",
    "create_semantic_cache": "ai.semcache.cache",
    "GuardConfig": "ai.semcache.config",
    "SemCacheConfig": "ai.semcache.config",
    "EMBEDDERS": "ai.semcache.embedder",
    "Embedder": "ai.semcache.embedder",
    "MiniLMEmbedder": "ai.semcache.embedder",
    "ModelFileError": "ai.semcache.embedder",
    "Guard": "ai.semcache.guards",
    "check": "ai.semcache.guards",
    "PartitionIndex": "ai.semcache.index",
    "SemanticCache": "ai.semcache_api",
    "SemanticHit": "ai.semcache_api",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


__all__ = [
    "EMBEDDERS",
    "Embedder",
    "Guard",
    "GuardConfig",
    "MiniLMEmbedder",
    "ModelFileError",
    "PartitionIndex",
    "SemCacheConfig",
    "SemanticCache",
    "SemanticCacheImpl",
    "SemanticHit",
    "UnknownEmbedder",
    "check",
    "create_semantic_cache",
]
