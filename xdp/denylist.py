"""The stateless deny list in its maps: rules (single CIDRs or IP sets) folded into LPM
tries and per-protocol / per-port rule masks, in two generations swapped atomically.

Rules are evaluated in document order, 64 to a *word* (``maps.h``): rule ``r`` is bit
``r % 64`` of word ``r // 64``, up to ``BuildOptions.max_deny_rules`` (4,096 by
default).  Each side (source, destination) is one LPM trie keyed by (generation, word,
prefix) whose entries are every distinct prefix the word's rules name, valued with the
mask of the word's rules whose side contains it; an IP set of 100,000 CIDRs is 100,000
entries of one rule's bit, one lookup per packet whatever its size.  An LPM lookup
returns only the longest match, so each entry also carries the bits of the containing
prefixes: a sort by (start, length) and a stack of the enclosing prefixes compute that
in O(n log n) (prefixes nest or are disjoint).  Per protocol, a bitmap of the words
holding a rule for it lets the program skip every word (and every LPM walk) that cannot
match: traffic no rule's protocol names costs one array read.  The first matching rule
(lowest id) is the one whose drop counter counts the packet.

Replace (:meth:`DenyList.replace`): write the inactive generation (the generation
byte is part of the LPM key), bump ``config.deny_gen`` (the epoch: its low bit is the
active generation; one u32 the program reads once per packet, so every packet sees
one whole rule set), clear the old one.  An offloaded flow that passed the list stamps
the epoch into its flow entry and skips the lookups until the next replace (the way
Cilium keeps a policy verdict in its conntrack entry): the deny list costs an
established flow nothing, whatever its size.  The LPM entries and the per-word arrays
go in and out with BPF_MAP_UPDATE_BATCH / BPF_MAP_DELETE_BATCH, one syscall each, so
100,000 CIDRs replace in a fraction of a second.  Every limit is checked before the
first write: a refused rule set leaves the active one.

Meaning (the nftables deny rules' own, which sit in the forward chain): the program
applies the list only to packets arriving on the inside interface (``config.
inside_ifindex``, and the linked GWLB interface) that are not addressed to the gateway
itself (``local_addrs``, kept current by :meth:`DenyList.set_local_addresses`).
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address

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
from xdp.records import DenyRule, RecordError

log = logging.getLogger("spectra.xdp")

_LPM_KEY = struct.Struct("=IBB4s")  # struct deny_lpm_key (packed)


WORD_BITS = 64


@dataclass(frozen=True, slots=True)
class DenyTables:
    """The fds behind the deny list (see maps.h)."""

    config: BpfMap[ctypes.c_uint32, SpectraConfigC]
    src: BpfMap[DenyLpmKeyC, ctypes.c_uint64]
    dst: BpfMap[DenyLpmKeyC, ctypes.c_uint64]
    proto: BpfMap[ctypes.c_uint32, ctypes.c_uint64]
    rule_proto: BpfMap[ctypes.c_uint32, ctypes.c_uint64]
    port_any: BpfMap[ctypes.c_uint32, ctypes.c_uint64]
    port: BpfMap[DenyPortKeyC, ctypes.c_uint64]
    local: BpfMap[ctypes.c_uint32, ctypes.c_uint8]
    rule_stats: PerCpuCounters


def lpm_entries(per_rule: Sequence[Sequence[Prefix]]) -> tuple[list[Prefix], list[int]]:
    """Distinct prefixes of all rules (sorted) and the mask of each: the bits of every
    rule naming it or a prefix containing it (rule i = bit i; at most 64 rules)."""
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


def _lpm_keys(gen: int, words: Sequence[tuple[int, Sequence[Prefix]]]) -> ctypes.Array[DenyLpmKeyC]:
    pack = _LPM_KEY.pack
    raw = b"".join(
        pack(16 + plen, gen, word, addr.to_bytes(4, "big"))
        for word, prefixes in words
        for addr, plen in prefixes
    )
    return (DenyLpmKeyC * (len(raw) // _LPM_KEY.size)).from_buffer_copy(raw)


def _u32s(values: Sequence[int]) -> ctypes.Array[ctypes.c_uint32]:
    return (ctypes.c_uint32 * len(values))(*values)


def _u64s(values: Sequence[int]) -> ctypes.Array[ctypes.c_uint64]:
    return (ctypes.c_uint64 * len(values))(*values)


class DenyList:
    """Stateless deny rules in two generations; :meth:`replace` swaps them atomically."""

    def __init__(
        self, tables: DenyTables, port_table_size: int, lpm_size: int, max_rules: int
    ) -> None:
        self.t = tables
        self.port_budget = port_table_size // DENY_GENERATIONS
        self.lpm_budget = lpm_size // DENY_GENERATIONS
        self.max_rules = max_rules
        self.words = max_rules // WORD_BITS
        # LPM keys this process wrote, per generation and side: cleared by one batch
        # delete.  Unknown (after an adopt): found by iterating the trie.
        self._written: dict[int, tuple[ctypes.Array[DenyLpmKeyC], ...]] = {}
        self._cleared: set[int] = set()  # generations this process emptied since
        # Rule words whose array slots may be nonzero, per generation (unknown: all).
        self._dirty_words: dict[int, int] = {}

    def _config(self) -> SpectraConfigC:
        return self.t.config.get(ctypes.c_uint32(0)) or SpectraConfigC()

    def active_generation(self) -> int:
        return int(self._config().deny_gen) & 1

    def set_inside_ifindex(self, ifindex: int) -> None:
        """Where the list applies: packets arriving on ``ifindex`` (0: nowhere)."""
        cfg = self._config()
        cfg.inside_ifindex = ifindex
        self.t.config.put(ctypes.c_uint32(0), cfg)

    def set_local_addresses(self, addresses: Sequence[IPv4Address]) -> None:
        """The gateway's own addresses (never denied: not forwarded); added before the
        stale ones go, so no address is ever missing while it stays local."""
        want = {ctypes.c_uint32.from_buffer_copy(a.packed).value for a in addresses}
        have = {int(k.value) for k in self.t.local.iter_keys()}
        one = ctypes.c_uint8(1)
        for key in sorted(want - have):
            self.t.local.put(ctypes.c_uint32(key), one)
        for key in sorted(have - want):
            self.t.local.delete(ctypes.c_uint32(key))

    def local_addresses(self) -> list[IPv4Address]:
        return sorted(IPv4Address(bytes(k)) for k in self.t.local.iter_keys())

    def _port_masks(self, rules: Sequence[DenyRule]) -> dict[tuple[int, int, int], int]:
        """(word, proto, port) -> mask of the word's rules whose range holds the port."""
        port_masks: dict[tuple[int, int, int], int] = {}
        for index, rule in enumerate(rules):
            if rule.ports is None:
                continue
            word, bit = divmod(index, WORD_BITS)
            low, high = rule.ports
            for proto in rule.port_protocols:
                for port in range(low, high + 1):
                    key = (word, proto, port)
                    port_masks[key] = port_masks.get(key, 0) | (1 << bit)
        if len(port_masks) > self.port_budget:
            raise RecordError(
                f"ports: the rules expand to {len(port_masks)} (protocol, port) entries, "
                f"at most {self.port_budget} accepted; use ports=None for any port or "
                "raise BuildOptions.deny_port_table_size"
            )
        return port_masks

    def _proto_arrays(self, rules: Sequence[DenyRule]) -> tuple[list[int], ...]:
        """Values of the generation's slices of deny_proto (word bitmaps, 256 slots),
        deny_rule_proto and deny_port_any (words x 256 slots each)."""
        words = -(-len(rules) // WORD_BITS)
        bitmaps = [0] * DENY_PROTO_SLOTS
        rule_proto = [0] * (words * DENY_PROTO_SLOTS)
        port_any = [0] * (words * DENY_PROTO_SLOTS)
        for index, rule in enumerate(rules):
            word, bit = divmod(index, WORD_BITS)
            protos = range(DENY_PROTO_SLOTS) if rule.proto is None else (rule.proto,)
            for proto in protos:
                slot = word * DENY_PROTO_SLOTS + proto
                rule_proto[slot] |= 1 << bit
                bitmaps[proto] |= 1 << word
                if rule.ports is None:
                    port_any[slot] |= 1 << bit
        return bitmaps, rule_proto, port_any

    def _write_arrays(self, gen: int, values: tuple[list[int], ...]) -> None:
        """Write the generation's deny_proto slots and the first words of its per-word
        arrays (as many as ``values`` holds: the rest are zero already)."""
        bitmaps, rule_proto, port_any = values
        base = gen * DENY_PROTO_SLOTS
        libbpf.map_update_batch(
            self.t.proto.fd, _u32s(range(base, base + DENY_PROTO_SLOTS)), _u64s(bitmaps)
        )
        base = gen * self.words * DENY_PROTO_SLOTS
        slots = _u32s(range(base, base + len(rule_proto)))
        libbpf.map_update_batch(self.t.rule_proto.fd, slots, _u64s(rule_proto))
        libbpf.map_update_batch(self.t.port_any.fd, slots, _u64s(port_any))

    def replace(self, rules: Sequence[DenyRule]) -> int:
        """Write ``rules`` into the inactive generation, flip ``config``, clear the old
        generation.  Returns the now active generation.  Rule id = index in ``rules``."""
        if len(rules) > self.max_rules:
            raise RecordError(
                f"rules: {len(rules)} deny rules given, at most {self.max_rules} accepted "
                "(BuildOptions.max_deny_rules)"
            )
        port_masks = self._port_masks(rules)
        sides = []
        for side in ("src", "dst"):
            words = []
            for word in range(0, len(rules), WORD_BITS):
                chunk = rules[word : word + WORD_BITS]
                words.append(lpm_entries([rule.prefixes(side) for rule in chunk]))
            total = sum(len(keys) for keys, _ in words)
            if total > self.lpm_budget:
                raise RecordError(
                    f"{side}: the rules name {total} CIDRs (distinct per 64 rules), at most "
                    f"{self.lpm_budget} accepted; raise BuildOptions.deny_lpm_size"
                )
            sides.append(words)
        old = self.active_generation()
        new = 1 - old
        if new not in self._cleared:
            self._clear_generation(new)
        self._cleared.discard(new)
        self.t.rule_stats.zero_range(new * self.max_rules, len(rules))
        written = []
        for table, words in zip((self.t.src, self.t.dst), sides, strict=True):
            lpm_keys = _lpm_keys(new, [(w, keys) for w, (keys, _) in enumerate(words)])
            masks = [m for _, word_masks in words for m in word_masks]
            libbpf.map_update_batch(table.fd, lpm_keys, _u64s(masks))
            written.append(lpm_keys)
        self._written[new] = tuple(written)
        for (word, proto, port), mask in port_masks.items():
            pkey = DenyPortKeyC(gen=new, proto=proto, be_port=socket.htons(port), word=word)
            self.t.port.put(pkey, ctypes.c_uint64(mask))
        self._write_arrays(new, self._proto_arrays(rules))
        self._dirty_words[new] = -(-len(rules) // WORD_BITS)
        cfg = self._config()
        # The epoch: new generation in its low bit, and a value no offloaded flow has
        # stamped, so each re-checks the new list (the other fields are not ours).
        cfg.deny_gen = (int(cfg.deny_gen) + 1) & 0xFFFFFFFF
        cfg.deny_rules = len(rules)
        self.t.config.put(ctypes.c_uint32(0), cfg)
        self._clear_generation(old)
        log.info(
            "deny list: %d rules, %d + %d LPM entries active in generation %d",
            len(rules),
            len(written[0]),
            len(written[1]),
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
        zeros = [0] * (self._dirty_words.get(gen, self.words) * DENY_PROTO_SLOTS)
        self._write_arrays(gen, ([0] * DENY_PROTO_SLOTS, zeros, zeros))
        self._dirty_words[gen] = 0
        self._cleared.add(gen)

    def entry_count(self, gen: int) -> int:
        """Map entries (LPM + port + nonzero array slots) held by generation ``gen``."""
        count = sum(1 for lpm in (self.t.src, self.t.dst) for k in lpm.iter_keys() if k.gen == gen)
        count += sum(1 for k in self.t.port.iter_keys() if k.gen == gen)
        for arr, size in (
            (self.t.proto, DENY_PROTO_SLOTS),
            (self.t.rule_proto, self.words * DENY_PROTO_SLOTS),
            (self.t.port_any, self.words * DENY_PROTO_SLOTS),
        ):
            for slot in range(gen * size, (gen + 1) * size):
                value = arr.get(ctypes.c_uint32(slot))
                count += bool(value is not None and value.value)
        return count

    def rule_drops(self) -> dict[int, tuple[int, int]]:
        """(packets, bytes) per rule id of the active generation, nonzero ones only."""
        cfg = self._config()
        gen = int(cfg.deny_gen) & 1
        out = {}
        for rule in range(min(int(cfg.deny_rules), self.max_rules)):
            packets, nbytes = self.t.rule_stats.read(gen * self.max_rules + rule)
            if packets:
                out[rule] = (packets, nbytes)
        return out
