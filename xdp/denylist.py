"""The stateless deny list in its maps: rules (single CIDRs or IP sets) folded into LPM
tries and per-protocol / per-port rule masks, in two generations swapped atomically.

A rule's id is a bit of a ``__u64`` mask (``maps.h``).  Each side (source,
destination) is one LPM trie whose entries are every distinct prefix any rule names,
valued with the mask of the rules whose side contains it; an IP set of 100,000 CIDRs
is 100,000 entries of one rule's bit, one lookup per packet whatever its size.  An
LPM lookup returns only the longest match, so each entry also carries the bits of the
containing prefixes: a sort by (start, length) and a stack of the enclosing prefixes
compute that in O(n log n) (prefixes nest or are disjoint).

Replace (:meth:`DenyList.replace`): write the inactive generation (the generation
byte is part of the LPM key), bump ``config.deny_gen`` (the epoch: its low bit is the
active generation; one u32 the program reads once per packet, so every packet sees
one whole rule set), clear the old one.  An offloaded flow that passed the list stamps
the epoch into its flow entry and skips the lookups until the next replace (the way
Cilium keeps a policy verdict in its conntrack entry): the deny list costs an
established flow nothing, whatever its size.  The
LPM entries go in and out with BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH, one
syscall each per side, so 100,000 CIDRs replace in a fraction of a second.  Every
limit is checked before the first write: a refused rule set leaves the active one.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from xdp import libbpf
from xdp.maps import (
    DENY_GENERATIONS,
    DENY_PROTO_SLOTS,
    BpfMap,
    DenyLpmKeyC,
    DenyPortKeyC,
    PerCpuCounters,
    SpectraConfigC,
)
from xdp.prefixes import Prefix
from xdp.records import MAX_DENY_RULES, DenyRule, RecordError

log = logging.getLogger("spectra.xdp")

_LPM_KEY = struct.Struct("=IB4s")  # struct deny_lpm_key (packed)


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


def lpm_entries(per_rule: Sequence[Sequence[Prefix]]) -> tuple[list[Prefix], list[int]]:
    """Distinct prefixes of all rules (sorted) and the mask of each: the bits of every
    rule naming it or a prefix containing it."""
    own: dict[Prefix, int] = {}
    for bit, prefixes in enumerate(per_rule):
        for prefix in prefixes:
            own[prefix] = own.get(prefix, 0) | (1 << bit)
    keys = sorted(own)  # a containing prefix sorts before everything it contains
    masks: list[int] = []
    stack: list[tuple[int, int]] = []  # (last address, folded mask) of enclosing prefixes
    for start, plen in keys:
        while stack and stack[-1][0] < start:
            stack.pop()
        mask = own[(start, plen)] | (stack[-1][1] if stack else 0)
        stack.append((start | (0xFFFFFFFF >> plen), mask))
        masks.append(mask)
    return keys, masks


def _lpm_keys(gen: int, prefixes: Sequence[Prefix]) -> ctypes.Array[DenyLpmKeyC]:
    pack = _LPM_KEY.pack
    raw = b"".join(pack(8 + plen, gen, addr.to_bytes(4, "big")) for addr, plen in prefixes)
    return (DenyLpmKeyC * len(prefixes)).from_buffer_copy(raw)


class DenyList:
    """Stateless deny rules in two generations; :meth:`replace` swaps them atomically."""

    def __init__(self, tables: DenyTables, port_table_size: int, lpm_size: int) -> None:
        self.t = tables
        self.port_budget = port_table_size // DENY_GENERATIONS
        self.lpm_budget = lpm_size // DENY_GENERATIONS
        # LPM keys this process wrote, per generation and side: cleared by one batch
        # delete.  Unknown (after an adopt): found by iterating the trie.
        self._written: dict[int, tuple[ctypes.Array[DenyLpmKeyC], ...]] = {}
        self._cleared: set[int] = set()  # generations this process emptied since

    def active_generation(self) -> int:
        cfg = self.t.config.get(ctypes.c_uint32(0))
        return 0 if cfg is None else int(cfg.deny_gen) & 1

    def _port_masks(self, rules: Sequence[DenyRule]) -> dict[tuple[int, int], int]:
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
        return port_masks

    def replace(self, rules: Sequence[DenyRule]) -> int:
        """Write ``rules`` into the inactive generation, flip ``config``, clear the old
        generation.  Returns the now active generation.  Rule id = index in ``rules``."""
        if len(rules) > MAX_DENY_RULES:
            raise RecordError(f"rules: {len(rules)} given, at most {MAX_DENY_RULES} accepted")
        port_masks = self._port_masks(rules)
        sides = []
        for side in ("src", "dst"):
            keys, masks = lpm_entries([rule.prefixes(side) for rule in rules])
            if len(keys) > self.lpm_budget:
                raise RecordError(
                    f"{side}: the rules name {len(keys)} distinct CIDRs, at most "
                    f"{self.lpm_budget} accepted; raise BuildOptions.deny_lpm_size"
                )
            sides.append((keys, masks))
        old = self.active_generation()
        new = 1 - old
        if new not in self._cleared:
            self._clear_generation(new)
        self._cleared.discard(new)
        for index in range(MAX_DENY_RULES):
            self.t.rule_stats.zero(new * MAX_DENY_RULES + index)
        written = []
        for table, (keys, masks) in zip((self.t.src, self.t.dst), sides, strict=True):
            lpm_keys = _lpm_keys(new, keys)
            libbpf.map_update_batch(table.fd, lpm_keys, (ctypes.c_uint64 * len(masks))(*masks))
            written.append(lpm_keys)
        self._written[new] = tuple(written)
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
            pkey = DenyPortKeyC(gen=new, proto=proto, be_port=socket.htons(port))
            self.t.port.put(pkey, ctypes.c_uint64(mask))
        cfg = self.t.config.get(ctypes.c_uint32(0)) or SpectraConfigC()
        # The epoch: new generation in its low bit, and a value no offloaded flow has
        # stamped, so each re-checks the new list (the other fields are not ours).
        cfg.deny_gen = (int(cfg.deny_gen) + 1) & 0xFFFFFFFF
        self.t.config.put(ctypes.c_uint32(0), cfg)
        self._clear_generation(old)
        log.info(
            "deny list: %d rules, %d + %d LPM entries active in generation %d",
            len(rules),
            len(sides[0][0]),
            len(sides[1][0]),
            new,
        )
        return new

    def _clear_generation(self, gen: int) -> None:
        known = self._written.pop(gen, None)
        for i, lpm in enumerate((self.t.src, self.t.dst)):
            if known is not None:
                try:
                    libbpf.map_delete_batch(lpm.fd, known[i])
                    continue
                except libbpf.LibbpfError:
                    log.warning("deny list: batch delete of generation %d failed; iterating", gen)
            for key in [k for k in lpm.iter_keys() if k.gen == gen]:
                lpm.delete(key)
        for pkey in [k for k in self.t.port.iter_keys() if k.gen == gen]:
            self.t.port.delete(pkey)
        zero = ctypes.c_uint64(0)
        for proto in range(DENY_PROTO_SLOTS):
            slot = ctypes.c_uint32(gen * DENY_PROTO_SLOTS + proto)
            self.t.proto.put(slot, zero)
            self.t.port_any.put(slot, zero)
        self._cleared.add(gen)

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
