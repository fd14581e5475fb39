"""Port forwards: ranges (kept, or mapped 1:1 elsewhere), source allow-lists and hairpin
NAT rendered into the nftables table (checked by ``nft -c``), and bad input refused
with the field named."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Any

import pytest

from control.config import ConfigValidationError, parse_document
from control.steps.nftables import render_nftables
from nfq.marks import SKB_MARK_HAIRPIN

pytestmark = pytest.mark.timeout(60)
OUTSIDE = ["203.0.113.2"]


def doc(*forwards: dict[str, Any], **sections: Any) -> Any:
    return parse_document({"interfaces": {"inside": "inside", "outside": "outside"},
                           "port_forwards": list(forwards), **sections})  # fmt: skip


def fwd(**changes: Any) -> dict[str, Any]:
    return {"proto": "tcp", "port": 8000, "to_address": "10.0.1.10", **changes}


def chain(text: str, name: str) -> list[str]:
    """The rule lines of chain ``name`` of a rendered table."""
    found = re.search(rf"\tchain {name} {{\n(.*?)\n\t}}", text, re.S)
    assert found, f"no chain {name}"
    return [ln.strip() for ln in found.group(1).splitlines()[1:]]


def nft_check(text: str) -> None:
    """``nft -c`` in a private network namespace (root, nft and unshare: else not run,
    as the other rendered-ruleset checks of this tier)."""
    if os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("unshare"):
        return
    proc = subprocess.run(["unshare", "--net", "nft", "-c", "-f", "-"], input=text,
                          capture_output=True, text=True, check=False, timeout=30)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_a_range_keeps_its_ports_or_maps_them_one_to_one() -> None:
    text = render_nftables(doc(fwd(port_end=8010), fwd(port=7000, port_end=7002, to_port=9000,
                                                      proto="udp")), OUTSIDE)  # fmt: skip
    rules = chain(text, "prerouting_nat")
    assert rules[0] == ('iifname "outside" ip daddr { 203.0.113.2 } tcp dport 8000-8010 counter '
                        'dnat ip to 10.0.1.10 comment "port_forwards[0]"')  # fmt: skip
    mapped = re.search(r"udp dport map \{ (.*?) \}", rules[2])
    assert mapped and mapped.group(1).split(", ") == ["7000 : 9000", "7001 : 9001", "7002 : 9002"]
    assert rules[2].startswith('iifname "outside" ip daddr { 203.0.113.2 } udp dport 7000-7002')
    nft_check(text)


def test_inside_workloads_are_hairpinned() -> None:
    text = render_nftables(doc(fwd(to_port=80)), OUTSIDE)
    mark = f"{SKB_MARK_HAIRPIN:#x}"
    assert chain(text, "prerouting_nat")[1] == (
        'iifname "inside" ip daddr { 203.0.113.2 } tcp dport 8000 counter '
        f"meta mark set meta mark | {mark} dnat ip to 10.0.1.10:80 "
        'comment "port_forwards[0] hairpin"'
    )
    assert chain(text, "postrouting_nat")[-1] == (
        f'oifname "inside" meta mark & {mark} == {mark} counter masquerade '
        'comment "port forward hairpin"'
    )
    nft_check(text)
    # one-arm NAT: one interface, the outside rule covers the workloads, no extra SNAT
    one_arm = render_nftables(parse_document({
        "interfaces": {"inside": "eth0", "outside": "eth0", "data_plane": "kernel"},
        "port_forwards": [fwd()]}), OUTSIDE)  # fmt: skip
    assert "hairpin" not in one_arm and len(chain(one_arm, "prerouting_nat")) == 1


def test_allow_from_drops_new_connections_from_other_sources() -> None:
    text = render_nftables(doc(fwd(allow_from=["198.51.100.0/24", "10.0.1.0/24"]), fwd(port=9000)),
                           OUTSIDE)  # fmt: skip
    assert chain(text, "port_forward_sources") == [
        'iifname { "inside", "outside" } ip daddr { 203.0.113.2 } tcp dport 8000 ct state new '
        "ip saddr != { 198.51.100.0/24, 10.0.1.0/24 } counter drop "
        'comment "port_forwards[0].allow_from"'
    ]
    assert "priority dstnat - 10" in text
    nft_check(text)
    assert "port_forward_sources" not in render_nftables(doc(fwd()), OUTSIDE)


@pytest.mark.parametrize(
    ("forwards", "path", "message"),
    [
        ([fwd(port_end=7999)], "port_forwards[0].port_end", "expected a port >= port (8000)"),
        ([fwd(port_end=8010, to_port=65530)], "port_forwards[0].to_port",
         "expected at most 65525 (the range has 11 ports)"),
        ([fwd(port_end=8000 + 4096, to_port=10000)], "port_forwards[0].port_end",
         "expected at most 4096 ports"),
        ([fwd(port_end=8010), fwd(port=8005, to_address="10.0.1.11")], "port_forwards[1].port",
         "tcp/8005 is already used by port_forwards[0].port (8000-8010)"),
        ([fwd(port=8075, port_end=8085)], "port_forwards[0].port",
         "tcp/8075-8085 is already used by api.port (8080)"),
        ([fwd(allow_from=["10.0.1.1/24"])], "port_forwards[0].allow_from[0]", "host bits"),
        ([fwd(allow_from=["bogus"])], "port_forwards[0].allow_from[0]", "IPv4 CIDR"),
    ],
)  # fmt: skip
def test_bad_forwards_are_refused_with_the_field(
    forwards: list[dict[str, Any]], path: str, message: str
) -> None:
    with pytest.raises(ConfigValidationError) as err:
        doc(*forwards)
    found = {e["path"]: e["message"] for e in err.value.errors}
    assert path in found and message in found[path], found


def test_other_protocols_and_adjacent_ranges_do_not_overlap() -> None:
    parsed = doc(fwd(port_end=8010), fwd(port=8011, port_end=8020), fwd(port_end=8010, proto="udp"))
    assert [f.last_port for f in parsed.port_forwards] == [8010, 8020, 8010]
