"""The agent's rendering of the ``gwlb`` section, pure parts: the decap hook decision,
the nftables lines (GWLB interface policed like the inside, GWLB flows marked), the
step's settings, and the offloader leaving marked flows on the kernel path unless a
two-arm GWLB interface is linked to the fast path."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from control.config import parse_document
from control.steps import STEPS, AnyHost, RenderError, render
from control.steps.gwlb import GwlbStep
from control.steps.nftables import render_nftables
from geneve.attach import plan
from nfq.marks import CT_MARK_GWLB
from xdp.offload import CtFlow, CtTuple, Timeouts, why_not_offloadable

BASE: dict[str, Any] = {"interfaces": {"inside": "inside", "outside": "outside"}}


def _doc(**gwlb: Any) -> Any:
    return parse_document({**BASE, "gwlb": {"enabled": True, **gwlb}})


def test_forced_tc_wins_over_a_native_capable_interface() -> None:
    p = plan("gwlb", 1500, "veth", requested="tc")
    assert (p.hook, p.tc_fallback_needed) == ("tc", True)
    assert "forced" in p.reason
    assert plan("gwlb", 1500, "veth").hook == "native"
    assert plan("eth1", 8500, "ena").hook == "tc"  # above ENA's native-XDP limit


def test_ruleset_marks_gwlb_flows_and_polices_the_gwlb_interface() -> None:
    doc = _doc(interface="gwlb", mode="two-arm")
    script = render_nftables(doc, ["203.0.113.2"])
    assert f'iifname "gwlb" ct state new ct mark set ct mark | {CT_MARK_GWLB:#x}' in script
    assert 'iifname { "inside", "gwlb" } oifname "outside" ip daddr' in script
    plain = render_nftables(parse_document(BASE), ["203.0.113.2"])
    assert f"ct mark | {CT_MARK_GWLB:#x}" not in plain
    assert 'iifname "inside" oifname "outside"' in plain


def test_step_settings_from_the_document() -> None:
    doc = _doc(
        interface="gwlb",
        mode="one-arm",
        decap_hook="tc",
        next_hop="172.16.1.1",
        allowed_sources=["172.16.1.0/28"],
    )
    s = GwlbStep.render(doc, AnyHost(("203.0.113.2",)))
    assert s is not None
    assert (s.iface, s.mode, s.decap_hook, s.next_hop) == ("gwlb", "one-arm", "tc", "172.16.1.1")
    assert s.allowed_sources == (IPv4Network("172.16.1.0/28"),)
    assert (s.health_port, s.idle_timeout, s.shares_xdp_hook) == (80, 350.0, False)
    assert s.xdp_fast_path  # data_plane: xdp, so a two-arm XDP decap would be linked
    kernel = parse_document(
        {"interfaces": {**BASE["interfaces"], "data_plane": "kernel"}, "gwlb": {"enabled": True}}
    )
    k = GwlbStep.render(kernel, AnyHost(("203.0.113.2",)))
    assert k is not None and not k.xdp_fast_path and not k.shares_xdp_hook
    # GWLB on the inside interface while the fast path owns its XDP hook: decap at tc
    shared = GwlbStep.render(_doc(), AnyHost(("203.0.113.2",)))
    assert shared is not None and shared.iface == "inside" and shared.shares_xdp_hook
    assert GwlbStep.render(parse_document(BASE), AnyHost(("1.2.3.4",))) is None


def test_offloader_leaves_gwlb_flows_on_the_kernel_path() -> None:
    orig = CtTuple(IPv4Address("10.0.100.10"), IPv4Address("198.51.100.10"), 40000, 7)
    reply = CtTuple(IPv4Address("198.51.100.10"), IPv4Address("203.0.113.2"), 7, 40000)
    status = (1 << 1) | (1 << 2) | (1 << 4)  # seen reply, assured, source-NATed
    ct = CtFlow(17, orig, reply, status, None, 0, 179)
    timeouts = Timeouts(udp_stream=180)
    assert why_not_offloadable(ct, timeouts, 5.0) is None
    marked = CtFlow(17, orig, reply, status, None, CT_MARK_GWLB, 179)
    assert why_not_offloadable(marked, timeouts, 5.0) == "gwlb"
    assert why_not_offloadable(marked, timeouts, 5.0, gwlb_linked=True) is None


def test_xdp_decap_on_the_fast_paths_interface_is_rejected_at_render() -> None:
    with pytest.raises(RenderError) as err:
        render(_doc(decap_hook="xdp"), STEPS, AnyHost(("203.0.113.2",)))
    assert err.value.path == "gwlb.decap_hook"
    assert "accepted here: auto or tc" in err.value.message
