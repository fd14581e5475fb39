"""The nftables step's ruleset: golden files, nft's own check, the slow path's invariant
rules, atomic replacement of its own table only; and the XDP step's deny records."""

from __future__ import annotations

import os
import shutil
import subprocess
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest

from control.config import ConfigValidationError, parse_document
from control.steps import RenderError
from control.steps.nftables import render_nftables
from control.steps.xdp import xdp_deny_rules
from tests.unit.control.conftest import full, minimal
from xdp.records import DenyRule

GOLDEN = Path(__file__).parent / "golden"


def snat_addresses() -> dict[str, Any]:
    doc = minimal()
    doc["nat"] = {"outside_addresses": ["203.0.113.2", "203.0.113.3"], "port_range": [1024, 65535]}
    return doc


def ip_sets() -> dict[str, Any]:
    """Deny rules naming IP sets on either side, one with ports, an allow rule on a set."""
    doc = minimal()
    doc["rules"] = {
        "ip_sets": {
            "feed": {"cidrs": ["203.0.113.0/24", "198.51.100.7/32", "192.0.2.128/25"]},
            "scanners": {"cidrs": ["10.9.0.0/16"]},
            "unused": {"cidrs": ["10.10.0.0/16"]},
        },
        "entries": [
            {"action": "deny", "dst_set": "feed", "comment": "threat feed"},
            {"action": "deny", "src_set": "scanners", "proto": "tcp", "ports": [22, 22]},
            {"action": "allow", "dst_set": "feed", "src": "10.0.1.0/24"},
        ],
    }
    return doc


def one_arm() -> dict[str, Any]:
    """A NAT instance on its one ENI (the AMI's first document), kernel path."""
    return {"interfaces": {"inside": "ens5", "outside": "ens5", "data_plane": "kernel"}}


def snat_pool() -> dict[str, Any]:
    """Round robin over the addresses per connection, ports fully randomised."""
    doc = snat_addresses()
    doc["nat"] |= {"address_selection": "connection", "random_fully": True}
    return doc


def masquerade_random() -> dict[str, Any]:
    doc = minimal()
    doc["nat"] = {"random_fully": True}
    return doc


def forward_probe() -> dict[str, Any]:
    """The forward probe's interface is an inside interface: its flow is judged, denied
    and translated as a workload's (``aws.health.forward_probes``)."""
    doc = minimal()
    doc["aws"] = {"health": {"forward_probes": ["198.51.100.10:443"]}}
    doc["rules"] = {"entries": [{"action": "deny", "proto": "tcp", "ports": [25, 25]}]}
    return doc


CASES = {
    "forward_probe": forward_probe,
    "minimal": minimal,
    "full": full,
    "snat_addresses": snat_addresses,
    "snat_pool": snat_pool,
    "masquerade_random": masquerade_random,
    "one_arm": one_arm,
    "ip_sets": ip_sets,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_ruleset_matches_golden(name: str) -> None:
    text = render_nftables(parse_document(CASES[name]()), ["203.0.113.2"])
    assert text == (GOLDEN / f"{name}.nft").read_text()


def _chains(text: str) -> dict[str, list[str]]:
    chains: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("\tchain "):
            current = chains.setdefault(line.split()[1], [])
        elif line.startswith("\t\t") and current is not None:
            current.append(line.strip())
    return chains


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_document_keeps_the_slow_path_invariant(name: str) -> None:
    """INVALID dropped before anything is accepted; no unsolicited inbound; the egress
    guard after source NAT drops any source that is not a NAT target."""
    doc = parse_document(CASES[name]())
    chains = _chains(render_nftables(doc, ["203.0.113.2"]))
    forward = chains["forward"]
    invalid = forward.index(
        'ct state invalid counter drop comment "never forward what conntrack cannot track"'
    )
    assert not any("accept" in rule for rule in forward[1:invalid])
    assert any(
        rule.startswith(f'iifname "{doc.interfaces.outside}" ct state new ')
        and rule.endswith('counter drop comment "no unsolicited inbound"')
        for rule in forward
    )
    guard = chains["egress_guard"]
    assert guard[0] == "type filter hook postrouting priority srcnat + 10; policy accept;"
    assert guard[1].startswith(f'oifname "{doc.interfaces.outside}" ')
    assert " ip saddr != {" in guard[1]
    assert guard[1].endswith('counter drop comment "untranslated source"')


def test_one_arm_nat_admits_new_flows_from_private_sources_only() -> None:
    """One interface both ways: "unsolicited inbound" is a new flow from a public source,
    and only original-direction packets must carry a NAT source (replies carry the
    internet's)."""
    chains = _chains(render_nftables(parse_document(one_arm()), ["10.0.0.10"]))
    private = "{ 10.0.0.0/8, 100.64.0.0/10, 172.16.0.0/12, 192.168.0.0/16 }"
    assert (
        f'iifname "ens5" ct state new ip saddr != {private} counter drop '
        'comment "no unsolicited inbound"'
    ) in chains["forward"]
    martian = [r for r in chains["forward"] if r.endswith('comment "martian destination"')]
    # a reply to a workload (a private destination) is not a martian
    assert martian[0].startswith('iifname "ens5" oifname "ens5" ct direction original ip daddr')
    deny = {"entries": [{"action": "deny", "proto": "tcp", "ports": [25, 25]}]}
    assert (
        'iifname "ens5" ct direction original tcp dport 25 counter drop comment "rules.entries[0]"'
    ) in _chains(render_nftables(parse_document(one_arm() | {"rules": deny}), ["10.0.0.10"]))[
        "forward"
    ]
    assert chains["egress_guard"][1] == (
        'oifname "ens5" ct direction original ip saddr != { 10.0.0.10 } counter drop '
        'comment "untranslated source"'
    )
    two_arm = render_nftables(parse_document(minimal()), ["10.0.0.10"])
    assert "ct direction" not in two_arm and "ip saddr != { 10.0.0.0/8" not in two_arm


def test_one_arm_nat_is_refused_on_the_xdp_data_plane() -> None:
    doc = one_arm()
    doc["interfaces"]["data_plane"] = "xdp"
    with pytest.raises(ConfigValidationError, match="XDP needs two") as err:
        parse_document(doc)
    assert [e["path"] for e in err.value.errors] == ["interfaces.outside"]


def test_ruleset_replaces_only_its_own_table_atomically() -> None:
    lines = render_nftables(parse_document(minimal()), ["198.51.100.7"]).splitlines()
    # create-if-missing, delete, re-create: one transaction, no other table named
    assert lines[:3] == ["table inet spectra", "delete table inet spectra", "table inet spectra {"]
    heads = [line.removesuffix(" {") for line in lines if line.startswith(("table", "delete"))]
    assert {head.split()[-1] for head in heads} == {"spectra"}


def test_guard_lists_every_outside_address() -> None:
    text = render_nftables(parse_document(minimal()), ["198.51.100.7", "198.51.100.8"])
    assert 'oifname "outside" ip saddr != { 198.51.100.7, 198.51.100.8 } counter drop' in text


@pytest.mark.parametrize("bad", ["", "eth 0", 'x"y', "a;b", "a{"])
def test_bad_interface_name_is_rejected_with_the_field(bad: str) -> None:
    doc = minimal()
    doc["interfaces"]["inside"] = bad
    with pytest.raises(ConfigValidationError) as err:
        parse_document(doc)
    assert [e["path"] for e in err.value.errors] == ["interfaces.inside"]


def test_guard_admits_only_the_nat_targets() -> None:
    text = render_nftables(parse_document(snat_addresses()), ["203.0.113.9"])
    assert "ip saddr != { 203.0.113.2, 203.0.113.3 } counter drop" in text
    assert "203.0.113.9" not in text


def test_interface_nat_needs_an_address() -> None:
    with pytest.raises(RenderError, match="no IPv4 address") as err:
        render_nftables(parse_document(minimal()), [])
    assert err.value.path == "nat.outside_addresses"


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


def zone_nat() -> dict[str, Any]:
    doc = minimal()
    doc["nat"] = {"outside_addresses": "zone"}
    doc["aws"] = {
        "zones": {
            "us-east-1a": {"nat_address": "10.0.101.100"},
            "us-east-1b": {"nat_address": "10.0.102.100"},
        }
    }
    return doc


@pytest.mark.parametrize(
    ("zone", "nat"), [("us-east-1a", "10.0.101.100"), ("us-east-1b", "10.0.102.100")]
)
def test_zone_nat_translates_to_the_zones_address(zone: str, nat: str) -> None:
    text = render_nftables(parse_document(zone_nat()), ["10.0.101.11"], zone)
    assert f"snat ip to {nat}:1024-65535" in text
    assert f"ip saddr != {{ {nat} }} counter drop" in text
    assert "masquerade" not in text and "10.0.101.11" not in text


def test_zone_nat_in_a_zone_the_document_does_not_name_is_refused() -> None:
    with pytest.raises(RenderError, match="us-east-1c") as err:
        render_nftables(parse_document(zone_nat()), ["10.0.103.11"], "us-east-1c")
    assert err.value.path == "aws.zones"


def test_zone_nat_needs_zones() -> None:
    doc = zone_nat()
    del doc["aws"]
    with pytest.raises(ConfigValidationError) as err:
        parse_document(doc)
    assert [e["path"] for e in err.value.errors] == ["nat.outside_addresses"]


def test_ip_sets_render_as_interval_sets_matched_by_one_rule_each() -> None:
    doc = ip_sets()
    text = render_nftables(parse_document(doc), ["203.0.113.2"])
    chains = _chains(text)
    assert chains["forward"][-3:-1] == [
        'iifname "inside" ip daddr @ipset_feed counter drop comment '
        '"rules.entries[0]: threat feed"',
        'iifname "inside" ip saddr @ipset_scanners tcp dport 22 counter drop comment '
        '"rules.entries[1]"',
    ]
    assert "ipset_unused" not in text  # a set no rule names has nothing to match
    body = text.split("\tset ipset_feed {\n", 1)[1].split("\n\t}\n", 1)[0].split("\n")
    assert body[:3] == ["\t\ttype ipv4_addr", "\t\tflags interval", "\t\telements = {"]
    elements = [line.strip().rstrip(",") for line in body[3:-1]]
    given = doc["rules"]["ip_sets"]["feed"]["cidrs"]
    assert elements == sorted(given, key=IPv4Network)  # address order: cheaper for nft
    assert elements != given  # the document's order is not already sorted


def test_deny_rules_naming_sets_carry_the_prefixes_to_xdp() -> None:
    rules = xdp_deny_rules(parse_document(ip_sets()))
    assert [(r.src_set, r.dst_set, r.ports) for r in rules] == [
        (None, ((0xCB007100, 24), (0xC6336407, 32), (0xC0000280, 25)), None),
        (((0x0A090000, 16),), None, (22, 22)),
    ]


def many_denies() -> dict[str, Any]:
    """4,096 deny rules (the XDP list's 64 words of 64), each one /32 with a port."""
    doc = minimal()
    doc["rules"] = {
        "entries": [
            {
                "action": "deny",
                "dst": f"198.18.{i // 256}.{i % 256}/32",
                "proto": "tcp",
                "ports": [1000 + i % 7, 1000 + i % 7],
            }
            for i in range(4096)
        ]
    }
    return doc


def test_thousands_of_deny_rules_keep_their_order_on_both_paths(tmp_path: Path) -> None:
    doc = parse_document(many_denies())
    text = render_nftables(doc, ["203.0.113.2"])
    drops = [line for line in _chains(text)["forward"] if "rules.entries[" in line]
    assert [int(line.split("rules.entries[")[1].split("]")[0]) for line in drops] == list(
        range(4096)
    )
    assert drops[4095].startswith(
        'iifname "inside" ip daddr 198.18.15.255/32 tcp dport 1000 counter drop'
    )
    rules = xdp_deny_rules(doc)
    assert [(r.dst, r.ports) for r in rules[4094:]] == [
        (IPv4Network("198.18.15.254/32"), (1006, 1006)),
        (IPv4Network("198.18.15.255/32"), (1000, 1000)),
    ]
    if os.geteuid() == 0 and shutil.which("nft") and shutil.which("unshare"):
        path = tmp_path / "many.nft"
        path.write_text(text)
        proc = subprocess.run(
            ["unshare", "--net", "nft", "-c", "-f", str(path)],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-500:]
