"""The evaluation's split report (perf/semcache.py): text-disjoint random halves and
the count of holdout pairs that share a text with the tune half; the labels' ceiling."""

from __future__ import annotations

import numpy as np
import pytest

from perf.semcache import Pair, label_ceiling, split_report, text_groups

pytestmark = pytest.mark.unit


def test_pairs_that_share_a_text_are_one_group() -> None:
    pairs = [Pair("a", "b", 1), Pair("b", "c", 0), Pair("d", "e", 1), Pair("e", "a", 1)]
    pairs.append(Pair("x", "y", 0))
    groups = text_groups(pairs)
    assert len(set(groups[:4].tolist())) == 1
    assert groups[4] != groups[0]


def test_random_halves_never_split_a_text_and_count_the_leak() -> None:
    pairs = [Pair(f"q{i}", f"q{i + 1}", i % 2) for i in range(0, 400, 2)]  # disjoint pairs
    pairs += [Pair("shared", f"other {i}", 1) for i in range(40)]  # one big component
    hits = np.array([p.label == 1 for p in pairs])
    label = hits.copy()
    report = split_report(pairs, hits, label, splits=3)
    tune = {t for p in pairs if p.split == "tune" for t in (p.text_a, p.text_b)}
    leaked = sum(p.text_a in tune or p.text_b in tune for p in pairs if p.split == "holdout")
    assert report["holdout_pairs_sharing_a_text_with_tune"] == leaked > 0
    assert len(report["random_text_disjoint_halves"]) == 3
    assert report["precision_min"] == 1.0 and report["recall_min"] == 1.0
    groups = text_groups(pairs)
    for seed in range(3):
        side = np.random.default_rng(seed).random(int(groups.max()) + 1) < 0.5
        sides: dict[str, set[bool]] = {}
        for pair, group in zip(pairs, groups, strict=True):
            for text in (pair.text_a, pair.text_b):
                sides.setdefault(text, set()).add(bool(side[group]))
        assert all(len(s) == 1 for s in sides.values())


def test_label_ceiling_counts_only_the_same_question_and_its_labels() -> None:
    pairs = [
        Pair(
            "How do I overcome my inferiority complex ?",
            "how do i overcome my inferiority complex",
            0,
        ),
        Pair("What is Python?", "What is python", 1),
        Pair("What is Python?", "What is Java?", 0),
        Pair("Who is A to B?", "Who is B to A?", 1),  # same words, another order: not counted
        Pair("Is C hard to learn?", "Is C++ hard to learn?", 0),  # another language: not counted
    ]
    assert label_ceiling(pairs) == {"same_question_pairs": 2, "labelled_1": 1, "precision": 0.5}
    assert label_ceiling(pairs[2:]) == {
        "same_question_pairs": 0,
        "labelled_1": 0,
        "precision": None,
    }
