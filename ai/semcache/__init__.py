"""Semantic cache of the AI gateway.

The gateway hashes everything but the last user message into a partition (tenant,
provider, model, system prompt, history, tools, parameters) and asks this package whether a
near-identical last message was answered before. Matching is a local MiniLM embedding
(onnxruntime, no network), brute-force cosine per partition, a threshold and guard
checks (numbers, names, negations, question words, opposite words and the roles
of words around "to", "from", "than", operator and currency symbols must agree).
``python -m perf semcache`` measures the shipped configuration on labelled pairs.
"""

from ai.semcache.cache import SemanticCacheImpl, UnknownEmbedder, create_semantic_cache
from ai.semcache.config import GuardConfig, SemCacheConfig
from ai.semcache.embedder import EMBEDDERS, Embedder, MiniLMEmbedder, ModelFileError
from ai.semcache.guards import Guard, check
from ai.semcache.index import PartitionIndex
from ai.semcache_api import SemanticCache, SemanticHit

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
