"""The ctypes mirrors in geneve.maps match the C structs of the GWLB programs: sizes as
the kernel recorded them for each map, and field offsets as bcc laid them out."""

from __future__ import annotations

import ctypes

import pytest

from geneve import Gwlb
from geneve.dataplane import compile_programs
from geneve.maps import GwlbConfigC, GwlbCounterC, GwlbKeyC, GwlbSourceKeyC, GwlbValueC
from xdp import libbpf

pytestmark = pytest.mark.bpf

# map -> (key mirror, value mirror); per-CPU maps record one CPU's value size.
MAP_LAYOUTS: dict[str, tuple[type[ctypes._CData], type[ctypes._CData]]] = {
    "gwlb_flows": (GwlbKeyC, GwlbValueC),
    "gwlb_stats": (ctypes.c_uint32, GwlbCounterC),
    "gwlb_config": (ctypes.c_uint32, GwlbConfigC),
    "gwlb_sources": (GwlbSourceKeyC, ctypes.c_uint8),
    "gwlb_fastpath": (ctypes.c_uint32, ctypes.c_uint32),
}


@pytest.mark.parametrize("name", sorted(MAP_LAYOUTS))
def test_kernel_map_sizes_match_mirrors(gwlb: Gwlb, name: str) -> None:
    info = libbpf.map_info(gwlb.maps.fds[name])
    key_type, value_type = MAP_LAYOUTS[name]
    assert (info.key_size, info.value_size) == (ctypes.sizeof(key_type), ctypes.sizeof(value_type))


@pytest.mark.parametrize(
    ("name", "side", "mirror"),
    [
        ("gwlb_flows", "Key", GwlbKeyC),
        ("gwlb_flows", "Leaf", GwlbValueC),
        ("gwlb_config", "Leaf", GwlbConfigC),
        ("gwlb_sources", "Key", GwlbSourceKeyC),
    ],
)
def test_field_offsets_match_bcc_layout(
    gwlb: Gwlb, name: str, side: str, mirror: type[ctypes.Structure]
) -> None:
    bpf = compile_programs(gwlb.build).owner  # the session's compile, cached
    assert bpf is not None
    c_type = getattr(bpf.get_table(name.encode()), side)
    c_offsets = {
        f[0]: getattr(c_type, f[0]).offset
        for f in c_type._fields_
        if not f[0].startswith("__pad")  # bcc's trailing padding
    }
    py_offsets = {f[0]: getattr(mirror, f[0]).offset for f in mirror._fields_}
    assert py_offsets == c_offsets
    assert ctypes.sizeof(mirror) == ctypes.sizeof(c_type)
