"""GWLB pins carry their build's layout: a restarted agent adopts its own build's pins
(configuration untouched) and replaces another build's, never adopting them."""

from __future__ import annotations

import os

from geneve import Gwlb, GwlbBuild
from geneve.dataplane import LAYOUT_SOURCES
from tests.bpf.conftest import require_bpf
from tests.bpf.geneve.conftest import TEST_PIN_ROOT
from xdp import loader


def _gwlb(instance: str) -> Gwlb:
    return Gwlb(instance, "lo", build=GwlbBuild(flow_table_size=1024), pin_root=TEST_PIN_ROOT)


def test_own_pins_are_adopted_and_another_builds_replaced() -> None:
    require_bpf()
    instance = f"gwlb-pins-{os.getpid()}"
    first = _gwlb(instance).load()
    try:
        first.configure(local_addr="172.16.9.2")
        configured = first.maps.config().be_local_addr
        first.close()
        adopted = _gwlb(instance).load()
        assert adopted.maps.config().be_local_addr == configured, "adopted as configured"
        adopted.close()

        (marker,) = first.pin_dir.glob("layout-*")
        marker.rmdir()
        (first.pin_dir / "layout-0123456789abcdef").mkdir()  # what an older release left
        replaced = _gwlb(instance).load()
        assert [m.name for m in replaced.pin_dir.glob("layout-*")] == [
            f"layout-{loader.layout_id(LAYOUT_SOURCES)}"
        ]
        assert replaced.maps.config().be_local_addr != configured, "fresh maps, not the old"
        replaced.close()
    finally:
        _gwlb(instance).load().destroy()
    assert not first.pin_dir.exists()
