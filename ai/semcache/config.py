"""``SemCacheConfig``: the semantic cache's settings (pydantic v2, unknown keys rejected).

The defaults are the shipped configuration that ``python -m perf semcache`` measures;
change ``threshold`` or a guard only together with a new evaluation run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Tuned on one half of the QQP dev pairs and checked on the other (perf/semcache.py).
DEFAULT_THRESHOLD = 0.94


class GuardConfig(BaseModel):
    """Which agreement checks a candidate above the threshold must also pass."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    numbers: bool = True
    """Numbers (digits and number words) must be the same in both texts."""
    entities: bool = True
    """Names (capitalised words inside a sentence, acronyms, CamelCase) must match."""
    negation: bool = True
    """Both texts carry the same number of negations (not, n't, no, never ...)."""
    question_words: bool = True
    """The leading question words must be compatible (why vs how is not)."""
    antonyms: bool = True
    """Neither text holds a word whose opposite is in the other (best vs worst)."""
    word_order: bool = True
    """Words around "to", "from", "than", "over" ... keep their roles (A to B vs B to A)."""
    symbols: bool = True
    """Operator and currency symbols must be the same (C++ vs C#, == vs !=, $ vs EUR);
    prose use of ! & / * is ignored."""


class SemCacheConfig(BaseModel):
    """Settings of the semantic cache; ``create_semantic_cache`` builds one from it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    threshold: float = Field(default=DEFAULT_THRESHOLD, gt=0.0, le=1.0)
    """Minimum cosine similarity between the stored and the looked-up text."""
    guards: GuardConfig = GuardConfig()
    embedder: str = "minilm-l6-int8"
    """Name in the embedder registry (``ai.semcache.embedder.EMBEDDERS``)."""
    model_path: Path | None = None
    """Override of the ONNX file (default: the one the embedder's package ships)."""
    tokenizer_path: Path | None = None
    """Override of ``tokenizer.json`` (default: the one the embedder's package ships)."""
    onnx_threads: int = Field(default=1, ge=1, le=64)
    """onnxruntime intra-op threads; one keeps a lookup from starving the event loop."""
    max_entries_per_partition: int = Field(default=100_000, ge=1)
    max_partitions: int = Field(default=10_000, ge=1)
    max_total_entries: int = Field(default=500_000, ge=1)
    """Bound over all partitions (384 float32 = 1.5 kB an entry); LRU partitions go first."""
    ttl_seconds: float | None = Field(default=86_400.0, gt=0)
    """Age after which an entry no longer matches; None keeps entries until evicted."""
    max_text_chars: int = Field(default=1_000, ge=1)
    """Longer texts are neither stored nor looked up (the model reads 256 tokens)."""
    path: Path | None = None
    """SQLite file keeping entries and their vectors across restarts (``store``);
    None: in memory only. The gateway defaults it next to a persistent exact cache."""
    candidates: int = Field(default=4, ge=1, le=64)
    """Nearest entries above the threshold that are tried against the guards."""

    @model_validator(mode="after")
    def _bounds_agree(self) -> Self:
        if self.max_entries_per_partition > self.max_total_entries:
            raise ValueError(
                f"max_entries_per_partition ({self.max_entries_per_partition}) exceeds "
                f"max_total_entries ({self.max_total_entries})"
            )
        return self
