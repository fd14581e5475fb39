"""tc_attach on a real clsact hook: a re-attach (a restarted agent) replaces our filter
in place, and a filter an older build left at a kernel-chosen priority is removed, so
there is never more than one decap filter."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute, netns

from geneve import Gwlb
from geneve import attach as hooks
from tests.bpf.conftest import require_bpf


@pytest.fixture
def dummy() -> Iterator[int]:
    """A veth end in a namespace of our own (this kernel has no dummy driver); this
    thread works inside the namespace."""
    require_bpf()
    ns = f"cs-tc-attach-{os.getpid()}"
    netns.create(ns)
    netns.pushns(ns)
    try:
        with IPRoute() as ipr:
            ipr.link("add", ifname="tcat0", kind="veth", peer="tcat1")
            yield ipr.link_lookup(ifname="tcat0")[0]
    finally:
        netns.popns()
        netns.remove(ns)


def _filters(ifindex: int) -> list[tuple[int, str]]:
    """(priority, program name) of the bpf filters at clsact ingress."""
    with IPRoute() as ipr:
        msgs = ipr.get_filters(index=ifindex, parent=hooks.TC_INGRESS_PARENT)
    return [
        (m["info"] >> 16, str(m.get_attr("TCA_OPTIONS").get_attr("TCA_BPF_NAME")))
        for m in msgs
        if m.get_attr("TCA_KIND") == "bpf"
        and m.get_attr("TCA_OPTIONS") is not None
        and m.get_attr("TCA_OPTIONS").get_attr("TCA_BPF_NAME")
    ]


def test_reattach_replaces_in_place_and_drops_an_older_stacked_filter(
    gwlb: Gwlb, dummy: int
) -> None:
    fd = gwlb.program_fd("tc_gwlb_decap")
    with IPRoute() as ipr:  # an older build: no priority given, the kernel picks one
        ipr.tc("add", "clsact", index=dummy)
        ipr.tc(
            "add-filter",
            "bpf",
            index=dummy,
            handle=1,
            fd=fd,
            name="tc_gwlb_decap",
            parent=hooks.TC_INGRESS_PARENT,
            classid=1,
            direct_action=True,
        )
    (older,) = _filters(dummy)
    assert older[0] != hooks.TC_PRIO
    for _ in range(2):
        hooks.tc_attach(dummy, fd, "tc_gwlb_decap", hooks.TC_INGRESS_PARENT)
        (only,) = _filters(dummy)
        assert only[0] == hooks.TC_PRIO and only[1].startswith("tc_gwlb_decap")
    assert hooks.tc_filter_present(dummy, hooks.TC_INGRESS_PARENT)
    hooks.tc_detach_filter(dummy, hooks.TC_INGRESS_PARENT)
    assert _filters(dummy) == []
