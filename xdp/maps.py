"""ctypes mirrors of the structs in ``xdp/bpf/maps.h`` and typed access to each map.

Map classes work on plain map fds (from bcc after a compile, or from bpffs pins after
an adopt), so a restarted agent needs no compiler.  tests/bpf/test_layout.py checks
every struct against the C layout.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import sys
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Address
from typing import Generic, TypeVar

from xdp import flowpack, libbpf
from xdp.reasons import REASON_COUNT, Reason
from xdp.records import (
    FlowEntry,
    FlowKey,
    RecordError,
)

log = logging.getLogger("spectra.xdp")

DENY_GENERATIONS = 2
DENY_PROTO_SLOTS = 256


def _be16(value: int) -> int:
    return socket.htons(value)


def _from_be16(value: int) -> int:
    return socket.ntohs(value)


def _be32(addr: IPv4Address) -> int:
    return int.from_bytes(addr.packed, sys.byteorder)  # packet bytes as a native u32


def _from_be32(value: int) -> IPv4Address:
    return IPv4Address(value.to_bytes(4, sys.byteorder))


def _mac_str(raw: Sequence[int]) -> str:
    return ":".join(f"{b:02x}" for b in raw)


class FlowKeyC(ctypes.Structure):
    """``struct flow_key``."""

    _fields_ = [
        ("ifindex", ctypes.c_uint32),
        ("be_saddr", ctypes.c_uint32),
        ("be_daddr", ctypes.c_uint32),
        ("be_sport", ctypes.c_uint16),
        ("be_dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class FlowValueC(ctypes.Structure):
    """``struct flow_value``."""

    _fields_ = [
        ("be_new_saddr", ctypes.c_uint32),
        ("be_new_daddr", ctypes.c_uint32),
        ("be_new_sport", ctypes.c_uint16),
        ("be_new_dport", ctypes.c_uint16),
        ("egress_ifindex", ctypes.c_uint32),
        ("src_mac", ctypes.c_uint8 * 6),
        ("dst_mac", ctypes.c_uint8 * 6),
        ("flags", ctypes.c_uint32),
        ("deny_epoch", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("last_seen_ns", ctypes.c_uint64),
    ]


class CounterC(ctypes.Structure):
    """``struct counter`` (one CPU's slot of a per-CPU counter)."""

    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class SpectraConfigC(ctypes.Structure):
    """``struct spectra_config``."""

    _fields_ = [
        ("deny_gen", ctypes.c_uint32),
        ("gwlb_ifindex", ctypes.c_uint32),
        ("inside_ifindex", ctypes.c_uint32),
        ("deny_rules", ctypes.c_uint32),
    ]


class DenySampleC(ctypes.Structure):
    """``struct deny_sample``: one denied packet in the ``deny_samples`` ring buffer."""

    _fields_ = [
        ("rule", ctypes.c_uint32),
        ("deny_gen", ctypes.c_uint32),
        ("be_saddr", ctypes.c_uint32),
        ("be_daddr", ctypes.c_uint32),
        ("be_sport", ctypes.c_uint16),
        ("be_dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
        ("pkt_len", ctypes.c_uint32),
    ]


class SampleBudgetC(ctypes.Structure):
    """``struct sample_budget``: one CPU's token bucket and sampling counters."""

    _fields_ = [
        ("window_ns", ctypes.c_uint64),
        ("sampled", ctypes.c_uint64),
        ("suppressed", ctypes.c_uint64),
        ("ring_full", ctypes.c_uint64),
        ("used", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class DenyLpmKeyC(ctypes.Structure):
    """``struct deny_lpm_key`` (packed)."""

    _pack_ = 1
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("gen", ctypes.c_uint8),
        ("word", ctypes.c_uint8),
        ("addr", ctypes.c_uint8 * 4),
    ]


class DenyPortKeyC(ctypes.Structure):
    """``struct deny_port_key``."""

    _fields_ = [
        ("gen", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("be_port", ctypes.c_uint16),
        ("word", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


# Name -> ctypes mirror, for the layout test.
C_STRUCTS: dict[str, type[ctypes.Structure]] = {
    "flow_key": FlowKeyC,
    "flow_value": FlowValueC,
    "counter": CounterC,
    "spectra_config": SpectraConfigC,
    "deny_lpm_key": DenyLpmKeyC,
    "deny_port_key": DenyPortKeyC,
}

K = TypeVar("K", bound=ctypes._SimpleCData | ctypes.Structure)  # type: ignore[type-arg]
V = TypeVar("V", bound=ctypes._SimpleCData | ctypes.Structure)  # type: ignore[type-arg]


class BpfMap(Generic[K, V]):
    """A map fd with fixed ctypes key/value types; owns the fd when ``owned``."""

    def __init__(self, fd: int, key_type: type[K], value_type: type[V], *, owned: bool) -> None:
        self.fd = fd
        self.key_type = key_type
        self.value_type = value_type
        self._owned = owned

    def get(self, key: K) -> V | None:
        value = self.value_type()
        return value if libbpf.map_lookup(self.fd, key, value) else None

    def put(self, key: K, value: V) -> None:
        libbpf.map_update(self.fd, key, value)

    def delete(self, key: K) -> bool:
        return libbpf.map_delete(self.fd, key)

    def iter_keys(self) -> Iterator[K]:
        """Snapshot iteration; entries added meanwhile may or may not appear."""
        prev: K | None = None
        while True:
            nxt = self.key_type()
            if not libbpf.map_get_next_key(self.fd, prev, nxt):
                return
            yield nxt
            prev = nxt

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


class PerCpuCounters:
    """A per-CPU array of ``struct counter``; reads sum over all possible CPUs."""

    def __init__(self, fd: int, size: int, *, owned: bool) -> None:
        self.fd = fd
        self.size = size
        self._owned = owned
        self._ncpus = libbpf.num_possible_cpus()
        self._value_type = CounterC * self._ncpus

    def read(self, index: int) -> tuple[int, int]:
        values = self._value_type()
        if not libbpf.map_lookup(self.fd, ctypes.c_uint32(index), values):
            return (0, 0)
        return (sum(v.packets for v in values), sum(v.bytes for v in values))

    def zero(self, index: int) -> None:
        libbpf.map_update(self.fd, ctypes.c_uint32(index), self._value_type())

    def zero_range(self, start: int, count: int) -> None:
        """Zero ``count`` slots from ``start`` in one BPF_MAP_UPDATE_BATCH."""
        keys = (ctypes.c_uint32 * count)(*range(start, start + count))
        libbpf.map_update_batch(self.fd, keys, (self._value_type * count)())

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


class FlowTable:
    """The ``flows`` LRU hash: FlowKey -> FlowEntry, one entry per flow direction."""

    def __init__(self, fd: int, capacity: int, *, owned: bool) -> None:
        self.map = BpfMap(fd, FlowKeyC, FlowValueC, owned=owned)
        self.capacity = capacity
        self._scratch = FlowValueC()

    @staticmethod
    def key_to_c(key: FlowKey) -> FlowKeyC:
        return FlowKeyC(
            ifindex=key.ifindex,
            be_saddr=_be32(key.saddr),
            be_daddr=_be32(key.daddr),
            be_sport=_be16(key.sport),
            be_dport=_be16(key.dport),
            proto=key.proto,
        )

    @staticmethod
    def key_from_c(c: FlowKeyC) -> FlowKey:
        return FlowKey(
            ifindex=c.ifindex,
            saddr=_from_be32(c.be_saddr),
            daddr=_from_be32(c.be_daddr),
            sport=_from_be16(c.be_sport),
            dport=_from_be16(c.be_dport),
            proto=c.proto,
        )

    @staticmethod
    def entry_to_c(entry: FlowEntry) -> FlowValueC:
        value = FlowValueC(
            be_new_saddr=_be32(entry.new_saddr),
            be_new_daddr=_be32(entry.new_daddr),
            be_new_sport=_be16(entry.new_sport),
            be_new_dport=_be16(entry.new_dport),
            egress_ifindex=entry.egress_ifindex,
            flags=entry.flags,
            packets=entry.packets,
            bytes=entry.bytes,
            last_seen_ns=entry.last_seen_ns,
        )
        value.src_mac[:] = list(flowpack.mac_bytes(entry.src_mac))
        value.dst_mac[:] = list(flowpack.mac_bytes(entry.dst_mac))
        return value

    @staticmethod
    def entry_from_c(c: FlowValueC) -> FlowEntry:
        return FlowEntry(
            new_saddr=_from_be32(c.be_new_saddr),
            new_daddr=_from_be32(c.be_new_daddr),
            new_sport=_from_be16(c.be_new_sport),
            new_dport=_from_be16(c.be_new_dport),
            egress_ifindex=c.egress_ifindex,
            src_mac=_mac_str(c.src_mac),
            dst_mac=_mac_str(c.dst_mac),
            flags=c.flags,
            packets=c.packets,
            bytes=c.bytes,
            last_seen_ns=c.last_seen_ns,
        )

    def put(self, key: FlowKey, entry: FlowEntry) -> None:
        self.map.put(self.key_to_c(key), self.entry_to_c(entry))

    def put_packed(self, keys: bytes, values: bytes) -> None:
        """Write packed keys and values (:mod:`xdp.flowpack`, concatenated in the same
        order) with one BPF_MAP_UPDATE_BATCH: no per-direction Python object."""
        count = len(keys) // flowpack.KEY_SIZE
        if count * flowpack.VALUE_SIZE != len(values):
            raise ValueError(f"{count} keys but {len(values) / flowpack.VALUE_SIZE} values")
        libbpf.map_update_batch(
            self.map.fd,
            (FlowKeyC * count).from_buffer_copy(keys),
            (FlowValueC * count).from_buffer_copy(values),
        )

    def activity_packed(self, raw: bytes) -> tuple[int, int] | None:
        """(``last_seen_ns``, flags) of a packed key's entry without converting the
        rest; None when absent (the offloader's keepalive looks, many per second)."""
        value = self._scratch
        if not libbpf.map_lookup_raw(self.map.fd, raw, value):
            return None
        return int(value.last_seen_ns), int(value.flags)

    def get_packed(self, raw: bytes) -> FlowEntry | None:
        value = FlowValueC()
        if not libbpf.map_lookup_raw(self.map.fd, raw, value):
            return None
        return self.entry_from_c(value)

    def delete_packed(self, raw: bytes) -> bool:
        return libbpf.map_delete_raw(self.map.fd, raw)

    def get(self, key: FlowKey) -> FlowEntry | None:
        value = self.map.get(self.key_to_c(key))
        return None if value is None else self.entry_from_c(value)

    def delete(self, key: FlowKey) -> bool:
        return self.map.delete(self.key_to_c(key))

    def items(self) -> list[tuple[FlowKey, FlowEntry]]:
        out = []
        for ckey in list(self.map.iter_keys()):
            value = self.map.get(ckey)
            if value is not None:  # evicted or deleted since the key walk
                out.append((self.key_from_c(ckey), self.entry_from_c(value)))
        return out

    def __len__(self) -> int:
        return sum(1 for _ in self.map.iter_keys())

    def clear(self) -> None:
        for ckey in list(self.map.iter_keys()):
            self.map.delete(ckey)


class DevMap:
    """The ``tx_ports`` DEVMAP (array indexed by ifindex, value = ifindex)."""

    def __init__(self, fd: int, capacity: int, *, owned: bool) -> None:
        self.map = BpfMap(fd, ctypes.c_uint32, ctypes.c_uint32, owned=owned)
        self.capacity = capacity

    def _check(self, ifindex: int) -> None:
        if not 0 < ifindex < self.capacity:
            raise RecordError(
                f"ifindex={ifindex}: tx_ports holds ifindexes 1..{self.capacity - 1} "
                "(raise BuildOptions.tx_ports_size)"
            )

    def add(self, ifindex: int) -> None:
        self._check(ifindex)
        self.map.put(ctypes.c_uint32(ifindex), ctypes.c_uint32(ifindex))

    def remove(self, ifindex: int) -> bool:
        self._check(ifindex)
        return self.map.delete(ctypes.c_uint32(ifindex))

    def ports(self) -> list[int]:
        out = []
        for index in range(1, self.capacity):
            value = self.map.get(ctypes.c_uint32(index))
            if value is not None and value.value:
                out.append(int(value.value))
        return out


class Stats:
    """The per-CPU ``stats`` array: (packets, bytes) per :class:`Reason`."""

    def __init__(self, fd: int, *, owned: bool) -> None:
        self.counters = PerCpuCounters(fd, REASON_COUNT, owned=owned)

    def read(self, reason: Reason) -> tuple[int, int]:
        return self.counters.read(int(reason))

    def all(self) -> dict[Reason, tuple[int, int]]:
        return {reason: self.read(reason) for reason in Reason}

    def clear(self) -> None:
        for reason in Reason:
            self.counters.zero(int(reason))
