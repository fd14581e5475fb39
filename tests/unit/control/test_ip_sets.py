"""IP sets in the config document: CIDRs in the document or a file, errors naming the
index (or file line) of a malformed or overlapping CIDR, references from rules."""

from __future__ import annotations

import random
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from control.config import ConfigValidationError, dump_document, parse_document
from tests.unit.control.conftest import minimal
from xdp.prefixes import from_network, overlaps, parse_prefix


def with_sets(sets: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {**minimal(), "rules": {"ip_sets": sets, "entries": entries}}


def errors_of(data: dict[str, Any]) -> list[tuple[str, Any, str]]:
    with pytest.raises(ConfigValidationError) as info:
        parse_document(data)
    return [(e["path"], e["value"], e["message"]) for e in info.value.errors]


def test_a_rule_matches_every_cidr_of_its_set() -> None:
    cidrs = ["203.0.113.0/24", "198.51.100.7/32", "10.0.0.0/8"]
    doc = parse_document(
        with_sets({"bad": {"cidrs": cidrs}}, [{"action": "deny", "dst_set": "bad"}])
    )
    rule = doc.rules.entries[0]
    assert doc.rules.prefixes(rule, "dst") == tuple(from_network(IPv4Network(c)) for c in cidrs)
    assert doc.rules.prefixes(rule, "src") == ((0, 0),)
    assert parse_document(dump_document(doc)) == doc  # round trip keeps the set


def test_malformed_cidr_is_named_by_its_index() -> None:
    cidrs = ["203.0.113.0/24", "198.51.100.7/33", "10.0.0.1/8"]
    errors = errors_of(with_sets({"bad": {"cidrs": cidrs}}, []))
    assert [path for path, _, _ in errors] == [
        "rules.ip_sets.bad.cidrs[1]",
        "rules.ip_sets.bad.cidrs[2]",
    ]


def test_overlapping_cidrs_are_named_by_both_indexes() -> None:
    cidrs = ["10.1.0.0/16", "192.0.2.0/24", "10.0.0.0/8", "192.0.2.0/24", "192.0.3.0/24"]
    errors = errors_of(with_sets({"bad": {"cidrs": cidrs}}, []))
    assert [(path, value) for path, value, _ in errors] == [
        ("rules.ip_sets.bad.cidrs[0]", "10.1.0.0/16"),
        ("rules.ip_sets.bad.cidrs[3]", "192.0.2.0/24"),
    ]
    assert "[2] 10.0.0.0/8" in errors[0][2] and "[1] 192.0.2.0/24" in errors[1][2]


def test_overlap_sweep_agrees_with_pairwise_checks() -> None:
    """Every reported CIDR overlaps the one named; every overlapping pair is reported
    (one side of it at least), over random mixed-length lists."""
    rng = random.Random(7)
    for _ in range(200):
        nets = [
            IPv4Network((rng.getrandbits(8) << 24 | rng.getrandbits(8) << 16, p), strict=False)
            for p in (rng.choice((8, 12, 16, 20, 24, 32)) for _ in range(rng.randint(1, 12)))
        ]
        found = overlaps([from_network(n) for n in nets])
        assert all(nets[i].overlaps(nets[j]) and i != j for i, j in found)
        reported = {i for i, _ in found}
        for i, a in enumerate(nets):
            for j, b in enumerate(nets[:i]):
                if a.overlaps(b):
                    assert i in reported or j in reported


def test_set_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "blocklist.txt"
    path.write_text("# feed\n203.0.113.0/24\n\n198.51.100.0/25  # scanner\n")
    doc = parse_document(
        with_sets({"feed": {"file": str(path)}}, [{"action": "deny", "src_set": "feed"}])
    )
    assert doc.rules.prefixes(doc.rules.entries[0], "src") == (
        parse_prefix("203.0.113.0/24"),
        parse_prefix("198.51.100.0/25"),
    )


def test_bad_file_lines_are_named(tmp_path: Path) -> None:
    path = tmp_path / "blocklist.txt"
    path.write_text("203.0.113.0/24\nnot-a-cidr\n203.0.113.128/25\n")
    errors = errors_of(with_sets({"feed": {"file": str(path)}}, []))
    assert [(p, v) for p, v, _ in errors] == [
        ("rules.ip_sets.feed.file[2]", "not-a-cidr"),
        ("rules.ip_sets.feed.file[3]", "203.0.113.128/25"),
    ]
    assert errors[1][2].startswith("line 3: overlaps line 1 203.0.113.0/24")


def test_missing_file_and_both_sources_are_refused(tmp_path: Path) -> None:
    ((path, _, msg),) = errors_of(with_sets({"feed": {"file": str(tmp_path / "none")}}, []))
    assert path == "rules.ip_sets.feed.file" and "cannot read" in msg
    both = {"file": str(tmp_path / "none"), "cidrs": []}
    ((path, _, msg),) = errors_of(with_sets({"feed": both}, []))
    assert path == "rules.ip_sets.feed.cidrs" and "exactly one" in msg


def test_rules_name_existing_sets_and_not_a_cidr_too() -> None:
    sets = {"bad": {"cidrs": ["192.0.2.0/24"]}}
    entries = [
        {"action": "deny", "dst_set": "nope"},
        {"action": "deny", "src": "10.0.0.0/8", "src_set": "bad"},
    ]
    errors = errors_of(with_sets(sets, entries))
    assert [(p, v) for p, v, _ in errors] == [
        ("rules.entries[1].src_set", "bad"),
    ]
    errors = errors_of(with_sets(sets, entries[:1]))
    assert errors == [
        ("rules.entries[0].dst_set", "nope", "expected a name of rules.ip_sets (bad)")
    ]


@pytest.mark.parametrize(
    "text", ["10.0.0.0/8", "0.0.0.0/0", "192.0.2.7/32", "192.0.2.7", "198.51.100.128/25"]
)
def test_prefix_parser_agrees_with_ipaddress(text: str) -> None:
    assert parse_prefix(text) == from_network(IPv4Network(text))


@pytest.mark.parametrize(
    "text",
    ["10.0.0.1/8", "10.0.0/8", "10.0.0.256/32", "10.0.0.0/33", "10.0.0.0/", "0x1.0.0.0/8", ""],
)
def test_prefix_parser_refuses_what_ipaddress_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        IPv4Network(text)
    with pytest.raises(ValueError):
        parse_prefix(text)


def test_deny_sets_beyond_the_xdp_lpm_size_are_refused_with_xdp_only() -> None:
    from tests.fixtures.blocklist import blocklist
    from xdp.loader import DEFAULT_OPTIONS
    from xdp.prefixes import prefix_str

    budget = DEFAULT_OPTIONS.deny_lpm_size // 2
    feed = [prefix_str(p) for p in blocklist(budget)]
    sets = {"a": {"cidrs": feed[: budget // 2 + 1]}, "b": {"cidrs": feed[budget // 2 :]}}
    entries = [{"action": "deny", "dst_set": "a"}, {"action": "deny", "dst_set": "b"}]
    parse_document(with_sets(sets, entries))  # a prefix shared in one rule word counts once
    sets["a"]["cidrs"].append("19.0.0.0/8")
    ((path, value, _),) = errors_of(with_sets(sets, entries))
    assert path == "rules.entries"
    assert value == f"{budget + 1} dst CIDRs in deny rules (distinct per 64 rules)"
    kernel = with_sets(sets, entries)
    kernel["interfaces"]["data_plane"] = "kernel"
    parse_document(kernel)
