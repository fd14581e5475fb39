"""Parse a Prometheus text exposition with ``prometheus_client``'s own parser, and check
what the parser tolerates but a Prometheus server refuses (a family's ``# TYPE`` twice,
a sample before or outside its family's TYPE line)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, frozenset[tuple[str, str]]]


def parse(text: str) -> tuple[dict[str, str], dict[Sample, float]]:
    """(family name -> type, (sample name, labels) -> value); asserts one TYPE line per
    family and no duplicate sample."""
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)), f"a TYPE line repeated: {sorted(types)}"
    assert all("{" not in name for name in types), "labels inside a TYPE line"
    families: dict[str, str] = {}
    samples: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in samples, f"sample {key} twice"
            samples[key] = s.value
    for name, kind in families.items():
        if kind == "counter":
            assert (name + "_total") in types or name in types
    return families, samples


def value(samples: dict[Sample, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]
