"""The rendered kernel-path ruleset: golden file, quoting, and the egress invariant."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.nftables import NatPolicy, NftError, render_ruleset

GOLDEN = Path(__file__).parent / "golden"


def test_ruleset_matches_golden() -> None:
    text = render_ruleset(NatPolicy("inside", "outside", ("203.0.113.2",)))
    assert text == (GOLDEN / "baseline.nft").read_text()


def test_ruleset_replaces_only_its_own_table_atomically() -> None:
    lines = render_ruleset(NatPolicy("in0", "out0", ("198.51.100.7",))).splitlines()
    # create-if-missing, delete, re-create: one transaction, no other table named
    assert lines[:3] == ["table inet spectra", "delete table inet spectra", "table inet spectra {"]
    heads = [line.removesuffix(" {") for line in lines if line.startswith(("table", "delete"))]
    tables = {head.split()[-1] for head in heads}
    assert tables == {"spectra"}


def test_guard_lists_every_outside_address() -> None:
    text = render_ruleset(NatPolicy("in0", "out0", ("198.51.100.7", "198.51.100.8")))
    assert 'oifname "out0" ip saddr != { 198.51.100.7, 198.51.100.8 } counter drop' in text


@pytest.mark.parametrize("bad", ["", "eth 0", 'x"y', "a;b", "a{"])
def test_bad_interface_name_is_rejected_with_the_name(bad: str) -> None:
    with pytest.raises(NftError, match="interface name"):
        render_ruleset(NatPolicy(bad, "outside", ("203.0.113.2",)))
