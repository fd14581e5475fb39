"""Folding deny rules into LPM entries: the sort-and-stack fold agrees with checking
every rule's prefixes for containment, for random rule sets with IP sets."""

from __future__ import annotations

import random

import pytest

from xdp.denylist import lpm_entries
from xdp.prefixes import Prefix, prefix_end


def contains(outer: Prefix, inner: Prefix) -> bool:
    return outer[1] <= inner[1] and outer[0] <= inner[0] and prefix_end(inner) <= prefix_end(outer)


def random_prefix(rng: random.Random) -> Prefix:
    plen = rng.choice((0, 8, 12, 16, 20, 24, 28, 32))
    addr = (rng.choice((10, 192, 203)) << 24 | rng.getrandbits(24)) & (0xFFFFFFFF << (32 - plen))
    return addr & 0xFFFFFFFF, plen


@pytest.mark.parametrize("seed", range(20))
def test_fold_matches_pairwise_containment(seed: int) -> None:
    rng = random.Random(seed)
    rules = [
        [random_prefix(rng) for _ in range(rng.randint(1, 30))] for _ in range(rng.randint(1, 64))
    ]
    keys, masks = lpm_entries(rules)
    assert keys == sorted({p for prefixes in rules for p in prefixes})
    for key, mask in zip(keys, masks, strict=True):
        expected = 0
        for bit, prefixes in enumerate(rules):
            if any(contains(p, key) for p in prefixes):
                expected |= 1 << bit
        assert mask == expected, key


def test_a_set_inside_a_wider_rule_carries_both_bits() -> None:
    keys, masks = lpm_entries([[(0, 0)], [(0x0A000000, 8), (0xC0000200, 24)]])
    assert dict(zip(keys, masks, strict=True)) == {
        (0, 0): 0b01,
        (0x0A000000, 8): 0b11,
        (0xC0000200, 24): 0b11,
    }
