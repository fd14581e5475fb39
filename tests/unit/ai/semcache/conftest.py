"""Fixtures of the semantic-cache unit tests: a deterministic fake embedder (so the
cache logic is tested without the model), a settable clock, and a cache factory."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt
import pytest

from ai.semcache import SemanticCacheImpl, SemCacheConfig, create_semantic_cache

DIM = 64


class FakeEmbedder:
    """Bag of lower-cased words hashed into 64 dimensions, L2-normalised; texts in
    ``fixed`` get the given vector instead (to place a similarity exactly)."""

    def __init__(self) -> None:
        self.fixed: dict[str, npt.NDArray[np.float32]] = {}
        self.calls = 0

    @property
    def dim(self) -> int:
        return DIM

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            if text in self.fixed:
                out[row] = self.fixed[text]
                continue
            for word in re.findall(r"\w+", text.lower()):
                out[row, hashlib.sha256(word.encode()).digest()[0] % DIM] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        normed: npt.NDArray[np.float32] = out / np.clip(norms, 1e-12, None)
        return normed


def at_similarity(similarity: float) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Two unit vectors whose cosine is ``similarity``."""
    a = np.zeros(DIM, dtype=np.float32)
    b = np.zeros(DIM, dtype=np.float32)
    a[0] = 1.0
    b[0], b[1] = similarity, np.sqrt(1.0 - similarity**2)
    return a, b


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_cache(embedder: FakeEmbedder, clock: Clock) -> Iterator[Callable[..., SemanticCacheImpl]]:
    """Build caches through the real factory, with the fake embedder and clock."""
    built: list[SemanticCacheImpl] = []

    def make(**settings: object) -> SemanticCacheImpl:
        config = SemCacheConfig.model_validate(settings)
        cache = create_semantic_cache(config, embedder, clock=clock)
        built.append(cache)
        return cache

    yield make
    for cache in built:
        cache.close()
