"""The real embedder: all-MiniLM-L6-v2 int8 from its PyPI package, offline; paraphrases
score higher than unrelated sentences, and the shipped cache matches a paraphrase."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest

from ai.semcache import MiniLMEmbedder, SemCacheConfig, create_semantic_cache
from ai.semcache.embedder import DIM

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def model() -> Iterator[MiniLMEmbedder]:
    embedder = MiniLMEmbedder()
    embedder.load()
    yield embedder


def test_vectors_are_unit_float32_rows(model: MiniLMEmbedder) -> None:
    vectors = model.embed(["one sentence", "and another, a little longer, sentence"])
    assert vectors.shape == (2, DIM) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert model.embed([]).shape == (0, DIM)


def test_batching_does_not_change_a_vector(model: MiniLMEmbedder) -> None:
    alone = model.embed(["How do I learn Python?"])[0]
    padded = model.embed(["How do I learn Python?", "a much longer text " * 10])[0]
    assert float(alone @ padded) > 0.9999


def test_paraphrases_are_closer_than_unrelated_sentences(model: MiniLMEmbedder) -> None:
    a, paraphrase, unrelated, near_topic = model.embed(
        [
            "How can I learn Python quickly?",
            "What is the fastest way to learn Python?",
            "What is the boiling point of water at high altitude?",
            "How can I learn to play the guitar quickly?",
        ]
    )
    assert float(a @ paraphrase) > 0.8
    assert float(a @ unrelated) < 0.2
    assert float(a @ paraphrase) > float(a @ near_topic) > float(a @ unrelated)


def test_shipped_cache_hits_a_paraphrase_and_refuses_a_changed_number() -> None:
    cache = create_semantic_cache(SemCacheConfig())

    async def scenario() -> tuple[object, object, object]:
        await cache.add("p", "How do I lose 5 kg in a month?", "entry")
        return (
            await cache.lookup("p", "How can I lose 5 kg in a month?"),
            await cache.lookup("p", "How do I lose 8 kg in a month?"),
            await cache.lookup("q", "How can I lose 5 kg in a month?"),
        )

    try:
        paraphrase, other_number, other_partition = asyncio.run(scenario())
    finally:
        cache.close()
    assert paraphrase is not None
    assert other_number is None
    assert other_partition is None
