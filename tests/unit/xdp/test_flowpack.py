"""The packed flow key/value layouts (:mod:`xdp.flowpack`) are the ctypes mirrors'
bytes (which ``tests/bpf/test_layout.py`` checks against the compiled program), and
unpack to what was packed."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from xdp import flowpack
from xdp.maps import FlowKeyC, FlowTable, FlowValueC
from xdp.records import FLOW_F_GWLB, FlowEntry, FlowKey

KEYS = [
    FlowKey(5, IPv4Address("10.0.1.10"), IPv4Address("198.51.100.10"), 40000, 443, 6),
    FlowKey(7, IPv4Address("198.51.100.10"), IPv4Address("203.0.113.2"), 53, 61000, 17),
    FlowKey.icmp_echo(2, IPv4Address("10.0.1.10"), IPv4Address("8.8.8.8"), 0xBEEF),
]
ENTRIES = [
    FlowEntry(IPv4Address("203.0.113.2"), IPv4Address("198.51.100.10"), 61000, 443, 3,
              "02:00:00:00:00:03", "0a:1b:2c:3d:4e:5f"),
    FlowEntry(IPv4Address("198.51.100.10"), IPv4Address("10.0.1.10"), 443, 40000, 2,
              "02:00:00:00:00:02", "02:00:00:00:00:aa", FLOW_F_GWLB, 7, 900, 123456789),
]  # fmt: skip


def test_sizes_are_the_mirrors() -> None:
    assert len(bytes(FlowKeyC())) == flowpack.KEY_SIZE
    assert len(bytes(FlowValueC())) == flowpack.VALUE_SIZE


@pytest.mark.parametrize("key", KEYS)
def test_key_bytes_are_the_ctypes_bytes(key: FlowKey) -> None:
    raw = flowpack.pack_key(key)
    assert raw == bytes(FlowTable.key_to_c(key))
    assert flowpack.unpack_key(raw) == key


@pytest.mark.parametrize("entry", ENTRIES)
def test_value_bytes_are_the_ctypes_bytes(entry: FlowEntry) -> None:
    raw = flowpack.pack_value(entry)
    assert raw == bytes(FlowTable.entry_to_c(entry))
    assert flowpack.unpack_value(raw) == entry
