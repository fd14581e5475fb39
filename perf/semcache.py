"""``python -m perf semcache --pairs FILE.jsonl.gz --json OUT [--limit N] [--split S]``:
precision, recall and false-hit rate of the shipped semantic-cache configuration.

Each line of FILE is ``{"text_a", "text_b", "label"}`` (label 1: same question). For
every pair, ``text_a`` is added to a fresh partition of a cache built with
``SemCacheConfig()`` defaults and ``text_b`` is looked up there, through the cache's
own lookup path (threshold, guards and all); a hit on a label-0 pair is a false hit.
Texts are embedded once, in batches, before the replay (the same model and pooling
as a lookup, only faster), so the replay measures matching, not the model.

Pairs are split deterministically by a hash of their texts: ``tune`` (used to choose
the threshold and guards) and ``holdout`` (never looked at while tuning); figures are
given for both and for all pairs. That split is by pair, and a question often occurs
in several pairs, so some holdout pairs share a text with tune pairs (the JSON says how
many); ``--random-splits N`` adds N random splits that keep every text on one side
(connected components of the pairs' texts), the spread a hidden holdout can show.
The labels' own ceiling is reported too: the pairs whose texts are the same question
after lower-casing and dropping punctuation, with the same operator symbols (any cache,
however good, must serve one for the other) and the share of them labelled 1 -- the
precision a perfect matcher scores on the clearest duplicates.
A threshold sweep with and without guards follows for information, then the latency
of ``lookup`` on the real model, measured on partitions of 1 and of up to 100,000
entries.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import statistics
import sys
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ai.semcache import EMBEDDERS, MiniLMEmbedder, SemanticCacheImpl, SemCacheConfig
from ai.semcache.guards import Features, check, enabled_guards

SPLITS = ("all", "tune", "holdout")
SWEEP = tuple(round(0.80 + 0.01 * i, 2) for i in range(20))
BATCH = 64


@dataclass(frozen=True, slots=True)
class Pair:
    text_a: str
    text_b: str
    label: int

    @property
    def split(self) -> str:
        """``tune`` or ``holdout``, fixed by the texts (stable across runs and files)."""
        key = f"{self.text_a}\x00{self.text_b}".encode()
        return "holdout" if zlib.crc32(key) % 2 else "tune"


@dataclass(frozen=True, slots=True)
class Scores:
    pairs: int
    positives: int
    hits: int
    true_hits: int
    precision: float | None
    recall: float | None
    false_hit_rate: float | None


def scores(hit: npt.NDArray[np.bool_], label: npt.NDArray[np.bool_]) -> Scores:
    true_hits = int((hit & label).sum())
    false_hits = int((hit & ~label).sum())
    positives, negatives = int(label.sum()), int((~label).sum())
    hits = true_hits + false_hits
    return Scores(
        pairs=int(label.size),
        positives=positives,
        hits=hits,
        true_hits=true_hits,
        precision=round(true_hits / hits, 4) if hits else None,
        recall=round(true_hits / positives, 4) if positives else None,
        false_hit_rate=round(false_hits / negatives, 4) if negatives else None,
    )


class Precomputed:
    """An ``Embedder`` answering from vectors computed beforehand in batches."""

    def __init__(self, texts: list[str], vectors: npt.NDArray[np.float32]) -> None:
        self._row = {t: i for i, t in enumerate(texts)}
        self._vectors = vectors

    @property
    def dim(self) -> int:
        return int(self._vectors.shape[1])

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        rows: npt.NDArray[np.float32] = self._vectors[[self._row[t] for t in texts]]
        return rows


def read_pairs(path: Path, limit: int | None) -> list[Pair]:
    opener = gzip.open if path.suffix == ".gz" else open
    pairs: list[Pair] = []
    with opener(path, "rt", encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pairs.append(Pair(str(row["text_a"]), str(row["text_b"]), int(row["label"])))
            except (ValueError, KeyError, TypeError) as exc:
                raise SystemExit(
                    f"{path}:{number}: not a text_a/text_b/label pair ({exc})"
                ) from exc
            if limit is not None and len(pairs) >= limit:
                break
    return pairs


def embed_all(embedder: MiniLMEmbedder, texts: list[str]) -> npt.NDArray[np.float32]:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # little padding
    out = np.zeros((len(texts), embedder.dim), dtype=np.float32)
    for start in range(0, len(order), BATCH):
        rows = order[start : start + BATCH]
        out[rows] = embedder.embed([texts[i] for i in rows])
    return out


def replay(pairs: list[Pair], embedder: Precomputed, config: SemCacheConfig) -> list[bool]:
    """Add text_a to a fresh partition, look text_b up there; True for a hit."""
    cache = SemanticCacheImpl(config, embedder, workers=1)
    try:
        hits = []
        for i, pair in enumerate(pairs):
            cache.add_sync(f"pair-{i}", pair.text_a, f"a{i}")
            hits.append(cache.lookup_sync(f"pair-{i}", pair.text_b) is not None)
        return hits
    finally:
        cache.close()


def sweep(
    sims: npt.NDArray[np.float32], passed: npt.NDArray[np.bool_], label: npt.NDArray[np.bool_]
) -> list[dict[str, Any]]:
    table = []
    for threshold in SWEEP:
        above = sims >= threshold
        table.append(
            {
                "threshold": threshold,
                "guarded": asdict(scores(above & passed, label)),
                "cosine_only": asdict(scores(above, label)),
            }
        )
    return table


def same_question(a: str, b: str) -> bool:
    """The same words in the same order (the guards' tokens) and the same operator
    symbols (C vs C++ is another question), ignoring case, punctuation and spacing."""
    fa, fb = Features(a), Features(b)
    return fa.tokens == fb.tokens and fa.symbols == fb.symbols


def label_ceiling(pairs: list[Pair]) -> dict[str, Any]:
    """How many pairs are the same question (:func:`same_question`) and the share of
    them labelled 1: the precision a perfect matcher reaches on them."""
    labels = [p.label for p in pairs if same_question(p.text_a, p.text_b)]
    return {
        "same_question_pairs": len(labels),
        "labelled_1": sum(labels),
        "precision": round(sum(labels) / len(labels), 4) if labels else None,
    }


def text_groups(pairs: list[Pair]) -> npt.NDArray[np.int64]:
    """For each pair, the id of its connected component of texts (union-find)."""
    parent: dict[str, str] = {}

    def root(t: str) -> str:
        parent.setdefault(t, t)
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for pair in pairs:
        a, b = root(pair.text_a), root(pair.text_b)
        if a != b:
            parent[a] = b
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(root(p.text_a), len(ids)) for p in pairs], dtype=np.int64)


def split_report(
    pairs: list[Pair], hits: npt.NDArray[np.bool_], label: npt.NDArray[np.bool_], splits: int
) -> dict[str, Any]:
    """How far the hash split leaks texts, and the shipped figures on ``splits`` random
    text-disjoint halves."""
    tune_texts = {t for p in pairs if p.split == "tune" for t in (p.text_a, p.text_b)}
    holdout = [p for p in pairs if p.split == "holdout"]
    shared = sum(p.text_a in tune_texts or p.text_b in tune_texts for p in holdout)
    groups = text_groups(pairs)
    halves = []
    for seed in range(splits):
        side = np.random.default_rng(seed).random(int(groups.max()) + 1) < 0.5
        mask = side[groups]
        halves.append(asdict(scores(hits[mask], label[mask])))
    precisions = [h["precision"] for h in halves if h["precision"] is not None]
    recalls = [h["recall"] for h in halves if h["recall"] is not None]
    return {
        "holdout_pairs_sharing_a_text_with_tune": shared,
        "holdout_pairs": len(holdout),
        "random_text_disjoint_halves": halves,
        "precision_min": min(precisions, default=None),
        "recall_min": min(recalls, default=None),
    }


def latency(texts: list[str], vectors: npt.NDArray[np.float32], samples: int) -> dict[str, Any]:
    """Milliseconds per ``await lookup`` with the shipped embedder and settings, on a
    partition of one entry and on one of up to ``max_entries_per_partition``."""
    config = SemCacheConfig()
    size = min(config.max_entries_per_partition, len(texts))
    queries = texts[-samples:]
    shipped = EMBEDDERS[config.embedder](config)
    shipped.embed(["load the model before timing"])
    result: dict[str, Any] = {}
    for entries in (1, size):
        cache = SemanticCacheImpl(config, Precomputed(texts, vectors))
        for i in range(entries):
            cache.add_sync("p", texts[i], f"e{i}")
        cache.embedder = shipped  # lookups embed for real from here on
        result[f"partition_{entries}"] = asyncio.run(_timed_lookups(cache, queries))
        cache.close()
    return result


async def _timed_lookups(cache: SemanticCacheImpl, queries: list[str]) -> dict[str, float]:
    took = []
    for query in queries:
        started = time.perf_counter()
        await cache.lookup("p", query + " ?")  # not an exact stored text: a real search
        took.append((time.perf_counter() - started) * 1000)
    took.sort()
    return {
        "p50_ms": round(statistics.median(took), 2),
        "p99_ms": round(took[min(len(took) - 1, int(0.99 * len(took)))], 2),
        "samples": len(took),
    }


def markdown(doc: dict[str, Any]) -> str:
    out = [
        "| split | pairs | precision | recall | false-hit rate | hits |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in doc["shipped"].items():
        out.append(
            f"| {name} | {s['pairs']} | {s['precision']} | {s['recall']} | "
            f"{s['false_hit_rate']} | {s['hits']} |"
        )
    out += [
        "",
        f"threshold sweep ({doc['sweep_split']} pairs; shipped threshold "
        f"{doc['config']['threshold']})",
        "",
        "| threshold | precision | recall | false-hit | cosine-only precision | recall |",
        "|---|---|---|---|---|---|",
    ]
    for row in doc["sweep"]:
        g, c = row["guarded"], row["cosine_only"]
        out.append(
            f"| {row['threshold']:.2f} | {g['precision']} | {g['recall']} | "
            f"{g['false_hit_rate']} | {c['precision']} | {c['recall']} |"
        )
    sp = doc["splits"]
    out += [
        "",
        f"{sp['holdout_pairs_sharing_a_text_with_tune']} of {sp['holdout_pairs']} holdout "
        f"pairs share a text with a tune pair; on {len(sp['random_text_disjoint_halves'])} "
        f"random text-disjoint halves: precision >= {sp['precision_min']}, recall >= "
        f"{sp['recall_min']}",
    ]
    ceiling = doc["label_ceiling"]
    out += [
        "",
        f"label ceiling: {ceiling['same_question_pairs']} pairs are the same question "
        f"(case and punctuation aside, same operator symbols), {ceiling['labelled_1']} "
        f"of them labelled 1: precision {ceiling['precision']} for a perfect matcher on them",
    ]
    out += ["", "| guard | refused true pairs | refused false pairs |", "|---|---|---|"]
    for guard, counts in doc["guard_refusals"].items():
        out.append(f"| {guard} | {counts['label_1']} | {counts['label_0']} |")
    return "\n".join(out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m perf semcache",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pairs", type=Path, required=True, metavar="FILE", help=".jsonl or .jsonl.gz")
    p.add_argument("--json", type=Path, required=True, metavar="OUT", help="write results here")
    p.add_argument("--limit", type=int, metavar="N", help="read only the first N pairs")
    p.add_argument(
        "--sweep-split",
        choices=SPLITS,
        default="tune",
        help="pairs the threshold sweep is computed on (default tune)",
    )
    p.add_argument("--latency-samples", type=int, default=200, metavar="N")
    p.add_argument(
        "--random-splits",
        type=int,
        default=5,
        metavar="N",
        help="random text-disjoint halves to report the shipped figures on (default 5)",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    config = SemCacheConfig()
    pairs = read_pairs(args.pairs, args.limit)
    if not pairs:
        print(f"perf semcache: no pairs in {args.pairs}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    model = MiniLMEmbedder(config.model_path, config.tokenizer_path, threads=2)
    model.load()
    loaded = time.perf_counter()
    texts = list(dict.fromkeys(t for p in pairs for t in (p.text_a, p.text_b)))
    vectors = embed_all(model, texts)
    embedded = time.perf_counter()
    hits = np.array(replay(pairs, Precomputed(texts, vectors), config))
    replayed = time.perf_counter()

    label = np.array([p.label == 1 for p in pairs])
    split = np.array([p.split for p in pairs])
    masks = {
        "all": np.ones(len(pairs), bool),
        "tune": split == "tune",
        "holdout": split == "holdout",
    }
    shipped = {name: asdict(scores(hits[m], label[m])) for name, m in masks.items()}
    splits = split_report(pairs, hits, label, args.random_splits)

    row = {t: i for i, t in enumerate(texts)}
    a = vectors[[row[p.text_a] for p in pairs]]
    b = vectors[[row[p.text_b] for p in pairs]]
    sims = np.einsum("ij,ij->i", a, b)
    guards = enabled_guards(config.guards)
    failed = [
        check(Features(p.text_a), Features(p.text_b), guards) if s >= SWEEP[0] else None
        for p, s in zip(pairs, sims, strict=True)
    ]
    passed = np.array([f is None for f in failed])
    refusals: dict[str, Counter[str]] = {g.value: Counter() for g in guards}
    for f, s, lab in zip(failed, sims, label, strict=True):
        if f is not None and s >= config.threshold:
            refusals[f.value][f"label_{int(lab)}"] += 1
    m = masks[args.sweep_split]
    table = sweep(sims[m], passed[m], label[m])
    swept = time.perf_counter()
    lat = latency(texts, vectors, args.latency_samples)

    doc: dict[str, Any] = {
        "suite": "semcache",
        "pairs_file": str(args.pairs),
        "config": json.loads(config.model_dump_json()),
        "shipped": shipped,
        "splits": splits,
        "label_ceiling": label_ceiling(pairs),
        "sweep_split": args.sweep_split,
        "sweep": table,
        "guard_refusals": {
            g: {"label_1": c["label_1"], "label_0": c["label_0"]} for g, c in refusals.items()
        },
        "lookup_latency": lat,
        "timing_s": {
            "model_load": round(loaded - started, 2),
            "embed": round(embedded - loaded, 2),
            "embed_ms_per_text_batched": round(1000 * (embedded - loaded) / len(texts), 3),
            "replay": round(replayed - embedded, 2),
            "replay_ms_per_pair": round(1000 * (replayed - embedded) / len(pairs), 3),
            "sweep": round(swept - replayed, 2),
            "total": round(time.perf_counter() - started, 2),
        },
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(markdown(doc))
    t = doc["timing_s"]
    print(
        f"\n{len(pairs)} pairs, {len(texts)} texts: model load {t['model_load']} s, embedding "
        f"{t['embed']} s ({t['embed_ms_per_text_batched']} ms/text batched), replay "
        f"{t['replay']} s ({t['replay_ms_per_pair']} ms/pair), total {t['total']} s"
    )
    for name, figures in lat.items():
        print(f"lookup latency, {name}: p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms")
    print(f"JSON in {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
