"""The kernel ruleset rendered from the document: golden files, nft's own check, XDP rules."""

from __future__ import annotations

import os
import shutil
import subprocess
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from control.config import parse_document, render_nftables, xdp_deny_rules
from control.nftables import NatPolicy, render_ruleset
from tests.unit.control.conftest import full, minimal
from xdp.records import DenyRule

GOLDEN = Path(__file__).parent / "golden"


def snat_addresses() -> dict[str, Any]:
    doc = minimal()
    doc["nat"] = {"outside_addresses": ["203.0.113.2", "203.0.113.3"], "port_range": [1024, 65535]}
    return doc


CASES = {"minimal": minimal, "full": full, "snat_addresses": snat_addresses}


@pytest.mark.parametrize("name", sorted(CASES))
def test_ruleset_matches_golden(name: str) -> None:
    text = render_nftables(parse_document(CASES[name]()), ["203.0.113.2"])
    assert text == (GOLDEN / f"{name}.nft").read_text()


def test_minimal_document_keeps_todays_baseline() -> None:
    """Every baseline rule of control.nftables is still there, in the same chains."""
    ours = render_nftables(parse_document(minimal()), ["203.0.113.2"]).splitlines()
    baseline = render_ruleset(NatPolicy("inside", "outside", ("203.0.113.2",))).splitlines()
    changed = [line for line in baseline if line not in ours]
    assert changed == [], changed
    assert (
        '\t\toifname "outside" meta l4proto { tcp, udp } counter masquerade to :1024-65535' in ours
    )


def test_guard_admits_only_the_nat_targets() -> None:
    text = render_nftables(parse_document(snat_addresses()), ["203.0.113.9"])
    assert "ip saddr != { 203.0.113.2, 203.0.113.3 } counter drop" in text
    assert "203.0.113.9" not in text


def test_interface_nat_needs_an_address() -> None:
    from control.nftables import NftError

    with pytest.raises(NftError, match="no IPv4 address"):
        render_nftables(parse_document(minimal()), [])


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("unshare") is None,
    reason="nft -c in a private network namespace needs root, nft and unshare",
)
@pytest.mark.parametrize("name", sorted(CASES))
def test_nft_accepts_the_ruleset(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.nft"
    path.write_text(render_nftables(parse_document(CASES[name]()), ["203.0.113.2"]))
    proc = subprocess.run(
        ["unshare", "--net", "nft", "-c", "-f", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr


def test_deny_rules_become_xdp_records() -> None:
    rules = xdp_deny_rules(parse_document(full()))
    assert rules == [
        DenyRule(dst=IPv4Network("198.51.100.0/24"), proto=6, ports=(25, 25)),
        DenyRule(src=IPv4Network("10.0.2.0/24"), proto=1),
    ]
