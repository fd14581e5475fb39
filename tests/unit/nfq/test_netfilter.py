"""Rendering of the inspection chains (iptables-restore and nft) against golden files,
and the policy model's validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from nfq import marks
from nfq.netfilter import NetfilterError, render_iptables, render_iptables_removal, render_nft
from nfq.policy import InspectionPolicy

GOLDEN = Path(__file__).parent / "golden"
POLICY = InspectionPolicy.model_validate({
    "selectors": [
        {"src": ["10.0.0.0/8"], "proto": "tcp", "ports": [80, "443:444"]},
        {"dst": ["198.51.100.0/24", "203.0.113.0/24"], "proto": "udp", "ports": ["53"]},
    ],
    "queues": "0:3",
    "fail_open": False,
})  # fmt: skip


def test_conntrack_mark_bits_are_distinct_single_bits() -> None:
    bits = [marks.CT_MARK_INSPECT, marks.CT_MARK_BYPASS, marks.CT_MARK_GWLB]
    assert all(b and b & (b - 1) == 0 for b in bits)
    assert len(set(bits)) == len(bits)


def test_iptables_golden() -> None:
    assert render_iptables(POLICY, in_interface="inside") == (GOLDEN / "inspect.ipt").read_text()


def test_nft_golden() -> None:
    assert render_nft(POLICY, in_interface="inside") == (GOLDEN / "inspect.nft").read_text()


def test_fail_open_adds_queue_bypass_single_queue_uses_queue_num() -> None:
    text = render_iptables(InspectionPolicy(queues=2, fail_open=True), add_jump=False)
    assert "-j NFQUEUE --queue-num 2 --queue-bypass" in text
    assert "-I FORWARD" not in text
    closed = render_iptables(InspectionPolicy(queues="0:1", fail_open=False))
    assert "--queue-balance 0:1\n" in closed and "--queue-bypass" not in closed
    assert "queue flags bypass to 0-1" in render_nft(InspectionPolicy(queues="0:1"))


def test_only_own_chains_are_touched() -> None:
    text = render_iptables(POLICY) + render_iptables_removal()
    for line in text.splitlines():
        if line.startswith(("-A", "-I", "-D", "-X", "-F", ":")):
            chain = line.split()[1] if not line.startswith(":") else line[1:].split()[0]
            assert chain in {"SPECTRA_INSPECT", "SPECTRA_VERDICT", "FORWARD"}, line
            if chain == "FORWARD":
                assert line.endswith("-j SPECTRA_INSPECT"), line
    assert {ln for ln in text.splitlines() if ln.startswith("*")} == {"*mangle"}


def test_disabled_policy_renders_empty_chains() -> None:
    text = render_iptables(InspectionPolicy(enabled=False))
    assert "NFQUEUE" not in text and ":SPECTRA_INSPECT - [0:0]" in text


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"queues": "3:1"}, "first is above last"),
        ({"selectors": [{"ports": [80]}]}, "ports need proto tcp or udp"),
        ({"selectors": [{"src": ["10.0.0.0/33"]}]}, "src"),
        ({"engine": "snort"}, "engine"),
        ({"stream_dept": 5}, "Extra inputs are not permitted"),
        ({"vars": {"1X": "any"}}, "variable name"),
    ],
)
def test_policy_validation(doc: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError, match=None) as exc:
        InspectionPolicy.model_validate(doc)
    assert needle in str(exc.value)


def test_bad_interface_name() -> None:
    with pytest.raises(NetfilterError, match="interface name"):
        render_iptables(POLICY, in_interface="a b")


def test_policy_round_trips_as_json() -> None:
    assert InspectionPolicy.model_validate_json(POLICY.model_dump_json()) == POLICY
