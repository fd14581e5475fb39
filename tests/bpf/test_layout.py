"""The ctypes mirrors in xdp.maps match the C structs: sizes as the kernel recorded
them for each map, and field offsets as bcc laid them out."""

from __future__ import annotations

import ctypes

import pytest

from xdp import Dataplane, libbpf
from xdp.maps import (
    CounterC,
    DenyLpmKeyC,
    DenyPortKeyC,
    FlowKeyC,
    FlowValueC,
    SampleBudgetC,
    SpectraConfigC,
)

pytestmark = pytest.mark.bpf

# map -> (key mirror, value mirror); per-CPU maps record one CPU's value size.
MAP_LAYOUTS: dict[str, tuple[type[ctypes._CData], type[ctypes._CData]]] = {
    "flows": (FlowKeyC, FlowValueC),
    "tx_ports": (ctypes.c_uint32, ctypes.c_uint32),
    "stats": (ctypes.c_uint32, CounterC),
    "deny_stats": (ctypes.c_uint32, CounterC),
    "config": (ctypes.c_uint32, SpectraConfigC),
    "deny_src": (DenyLpmKeyC, ctypes.c_uint64),
    "deny_dst": (DenyLpmKeyC, ctypes.c_uint64),
    "deny_proto": (ctypes.c_uint32, ctypes.c_uint64),
    "deny_port_any": (ctypes.c_uint32, ctypes.c_uint64),
    "deny_port": (DenyPortKeyC, ctypes.c_uint64),
    "deny_rule_proto": (ctypes.c_uint32, ctypes.c_uint64),
    "local_addrs": (ctypes.c_uint32, ctypes.c_uint8),
    "gwlb_flows_link": (ctypes.c_uint32, ctypes.c_uint32),  # map fd in, map id out
    "gwlb_config_link": (ctypes.c_uint32, ctypes.c_uint32),
    "deny_sample_rate": (ctypes.c_uint32, ctypes.c_uint32),
    "deny_sample_budget": (ctypes.c_uint32, SampleBudgetC),
}


@pytest.mark.parametrize("name", sorted(MAP_LAYOUTS))
def test_kernel_map_sizes_match_mirrors(session_dataplane: Dataplane, name: str) -> None:
    info = libbpf.map_info(session_dataplane.objects.map_fds[name])
    key_type, value_type = MAP_LAYOUTS[name]
    assert (info.key_size, info.value_size) == (ctypes.sizeof(key_type), ctypes.sizeof(value_type))


@pytest.mark.parametrize(
    ("name", "side", "mirror"),
    [
        ("flows", "Key", FlowKeyC),
        ("flows", "Leaf", FlowValueC),
        ("deny_src", "Key", DenyLpmKeyC),
        ("deny_port", "Key", DenyPortKeyC),
        ("config", "Leaf", SpectraConfigC),
    ],
)
def test_field_offsets_match_bcc_layout(
    session_dataplane: Dataplane, name: str, side: str, mirror: type[ctypes.Structure]
) -> None:
    bpf = session_dataplane.objects.owner
    assert bpf is not None, "the session instance is compiled, not adopted"
    c_type = getattr(bpf.get_table(name.encode()), side)
    c_offsets = {f[0]: getattr(c_type, f[0]).offset for f in c_type._fields_}
    py_offsets = {f[0]: getattr(mirror, f[0]).offset for f in mirror._fields_}
    assert py_offsets == c_offsets
    assert ctypes.sizeof(mirror) == ctypes.sizeof(c_type)
