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
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Generic, TypeVar

from xdp import libbpf
from xdp.reasons import REASON_COUNT, Reason
from xdp.records import (
    MAX_DENY_RULES,
    DenyRule,
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


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


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
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("last_seen_ns", ctypes.c_uint64),
    ]


class CounterC(ctypes.Structure):
    """``struct counter`` (one CPU's slot of a per-CPU counter)."""

    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


class SpectraConfigC(ctypes.Structure):
    """``struct spectra_config``."""

    _fields_ = [("deny_gen", ctypes.c_uint32), ("gwlb_ifindex", ctypes.c_uint32)]


class DenyLpmKeyC(ctypes.Structure):
    """``struct deny_lpm_key`` (packed)."""

    _pack_ = 1
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("gen", ctypes.c_uint8),
        ("addr", ctypes.c_uint8 * 4),
    ]


class DenyPortKeyC(ctypes.Structure):
    """``struct deny_port_key``."""

    _fields_ = [("gen", ctypes.c_uint8), ("proto", ctypes.c_uint8), ("be_port", ctypes.c_uint16)]


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

    def close(self) -> None:
        if self._owned and self.fd >= 0:
            os.close(self.fd)
        self.fd = -1


class FlowTable:
    """The ``flows`` LRU hash: FlowKey -> FlowEntry, one entry per flow direction."""

    def __init__(self, fd: int, capacity: int, *, owned: bool) -> None:
        self.map = BpfMap(fd, FlowKeyC, FlowValueC, owned=owned)
        self.capacity = capacity

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
        value.src_mac[:] = list(_mac_bytes(entry.src_mac))
        value.dst_mac[:] = list(_mac_bytes(entry.dst_mac))
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


@dataclass(frozen=True, slots=True)
class DenyTables:
    """The fds behind the deny list (see maps.h)."""

    config: BpfMap[ctypes.c_uint32, SpectraConfigC]
    src: BpfMap[DenyLpmKeyC, ctypes.c_uint64]
    dst: BpfMap[DenyLpmKeyC, ctypes.c_uint64]
    proto: BpfMap[ctypes.c_uint32, ctypes.c_uint64]
    port_any: BpfMap[ctypes.c_uint32, ctypes.c_uint64]
    port: BpfMap[DenyPortKeyC, ctypes.c_uint64]
    rule_stats: PerCpuCounters


def _lpm_masks(networks: Sequence[IPv4Network]) -> dict[IPv4Network, int]:
    """Mask per distinct network, folding in the bits of every containing network
    (an LPM lookup returns only the longest match)."""
    out: dict[IPv4Network, int] = {}
    for net in set(networks):
        mask = 0
        for bit, other in enumerate(networks):
            if net.subnet_of(other):
                mask |= 1 << bit
        out[net] = mask
    return out


class DenyList:
    """Stateless deny rules in two generations; :meth:`replace` swaps them atomically."""

    def __init__(self, tables: DenyTables, port_table_size: int) -> None:
        self.t = tables
        self.port_budget = port_table_size // DENY_GENERATIONS

    def active_generation(self) -> int:
        cfg = self.t.config.get(ctypes.c_uint32(0))
        return 0 if cfg is None else int(cfg.deny_gen) & 1

    def replace(self, rules: Sequence[DenyRule]) -> int:
        """Write ``rules`` into the inactive generation, flip ``config``, clear the old
        generation.  Returns the now active generation.  Rule id = index in ``rules``."""
        if len(rules) > MAX_DENY_RULES:
            raise RecordError(f"rules: {len(rules)} given, at most {MAX_DENY_RULES} accepted")
        port_masks: dict[tuple[int, int], int] = {}
        for bit, rule in enumerate(rules):
            if rule.ports is None:
                continue
            low, high = rule.ports
            for proto in rule.port_protocols:
                for port in range(low, high + 1):
                    port_masks[(proto, port)] = port_masks.get((proto, port), 0) | (1 << bit)
        if len(port_masks) > self.port_budget:
            raise RecordError(
                f"ports: the rules expand to {len(port_masks)} (protocol, port) entries, "
                f"at most {self.port_budget} accepted; use ports=None for any port or "
                "raise BuildOptions.deny_port_table_size"
            )
        old = self.active_generation()
        new = 1 - old
        self._clear_generation(new)
        for index in range(MAX_DENY_RULES):
            self.t.rule_stats.zero(new * MAX_DENY_RULES + index)
        for table, nets in (
            (self.t.src, [r.src for r in rules]),
            (self.t.dst, [r.dst for r in rules]),
        ):
            for net, mask in _lpm_masks(nets).items():
                key = DenyLpmKeyC(prefixlen=8 + net.prefixlen, gen=new)
                key.addr[:] = list(net.network_address.packed)
                table.put(key, ctypes.c_uint64(mask))
        for proto in range(DENY_PROTO_SLOTS):
            proto_mask = any_port_mask = 0
            for bit, rule in enumerate(rules):
                if rule.matches_proto(proto):
                    proto_mask |= 1 << bit
                    if rule.ports is None:
                        any_port_mask |= 1 << bit
            slot = ctypes.c_uint32(new * DENY_PROTO_SLOTS + proto)
            if proto_mask:
                self.t.proto.put(slot, ctypes.c_uint64(proto_mask))
            if any_port_mask:
                self.t.port_any.put(slot, ctypes.c_uint64(any_port_mask))
        for (proto, port), mask in port_masks.items():
            pkey = DenyPortKeyC(gen=new, proto=proto, be_port=_be16(port))
            self.t.port.put(pkey, ctypes.c_uint64(mask))
        cfg = self.t.config.get(ctypes.c_uint32(0)) or SpectraConfigC()
        cfg.deny_gen = new  # the other fields are not the deny list's
        self.t.config.put(ctypes.c_uint32(0), cfg)
        self._clear_generation(old)
        log.info("deny list: %d rules active in generation %d", len(rules), new)
        return new

    def _clear_generation(self, gen: int) -> None:
        for lpm in (self.t.src, self.t.dst):
            for key in [k for k in lpm.iter_keys() if k.gen == gen]:
                lpm.delete(key)
        for pkey in [k for k in self.t.port.iter_keys() if k.gen == gen]:
            self.t.port.delete(pkey)
        zero = ctypes.c_uint64(0)
        for proto in range(DENY_PROTO_SLOTS):
            slot = ctypes.c_uint32(gen * DENY_PROTO_SLOTS + proto)
            self.t.proto.put(slot, zero)
            self.t.port_any.put(slot, zero)

    def entry_count(self, gen: int) -> int:
        """Map entries (LPM + port + nonzero array slots) held by generation ``gen``."""
        count = sum(1 for lpm in (self.t.src, self.t.dst) for k in lpm.iter_keys() if k.gen == gen)
        count += sum(1 for k in self.t.port.iter_keys() if k.gen == gen)
        for arr in (self.t.proto, self.t.port_any):
            for proto in range(DENY_PROTO_SLOTS):
                value = arr.get(ctypes.c_uint32(gen * DENY_PROTO_SLOTS + proto))
                count += bool(value is not None and value.value)
        return count

    def rule_drops(self) -> dict[int, tuple[int, int]]:
        """(packets, bytes) per rule id of the active generation, nonzero ones only."""
        gen = self.active_generation()
        out = {}
        for rule in range(MAX_DENY_RULES):
            packets, nbytes = self.t.rule_stats.read(gen * MAX_DENY_RULES + rule)
            if packets:
                out[rule] = (packets, nbytes)
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
