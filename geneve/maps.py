"""ctypes mirrors of ``geneve/bpf/gwlb_maps.h`` (and of the flow state in
``xdp/include/spectra/gwlb_types.h``) and typed access to the GWLB maps.

Works on plain map fds (from bcc after a compile or from bpffs pins), so a restarted
agent needs no compiler.  tests/bpf/geneve/test_layout.py checks the sizes.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass

from geneve.reasons import GWLB_REASON_COUNT, GwlbReason
from xdp import libbpf

GENEVE_MAX_HDR = 260
GWLB_F_REFLECT = 1
GWLB_F_SOURCES = 2


class GwlbKeyC(ctypes.Structure):
    """``struct gwlb_key`` (geneve/flowkey.py builds its bytes)."""

    _fields_ = [
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("dir", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("be_port_lo", ctypes.c_uint16),
        ("be_port_hi", ctypes.c_uint16),
        ("addr_lo", ctypes.c_uint8 * 16),
        ("addr_hi", ctypes.c_uint8 * 16),
    ]


class GwlbValueC(ctypes.Structure):
    """``struct gwlb_value``."""

    _fields_ = [
        ("last_seen_ns", ctypes.c_uint64),
        ("be_gwlb_addr", ctypes.c_uint32),
        ("be_local_addr", ctypes.c_uint32),
        ("be_sport", ctypes.c_uint16),
        ("hdr_len", ctypes.c_uint16),
        ("pad", ctypes.c_uint32),
        ("hdr", ctypes.c_uint8 * GENEVE_MAX_HDR),
    ]


class GwlbConfigC(ctypes.Structure):
    """``struct gwlb_config``."""

    _fields_ = [
        ("idle_timeout_ns", ctypes.c_uint64),
        ("be_local_addr", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ]


class GwlbSourceKeyC(ctypes.Structure):
    """``struct gwlb_source_key`` (an LPM trie key)."""

    _fields_ = [("prefixlen", ctypes.c_uint32), ("be_addr", ctypes.c_uint8 * 4)]


class GwlbCounterC(ctypes.Structure):
    """``struct gwlb_counter``."""

    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


C_STRUCTS: dict[str, type[ctypes.Structure]] = {
    "gwlb_key": GwlbKeyC,
    "gwlb_value": GwlbValueC,
    "gwlb_config": GwlbConfigC,
    "gwlb_counter": GwlbCounterC,
    "gwlb_source_key": GwlbSourceKeyC,
}


@dataclass(frozen=True, slots=True)
class StoredHeader:
    """One ``gwlb_flows`` entry: the header and outer fields a reply will carry."""

    key: bytes
    header: bytes
    gwlb_addr: str
    local_addr: str
    sport: int
    last_seen_ns: int


def _addr(raw: int) -> str:
    return str(ipaddress.IPv4Address(raw.to_bytes(4, "little")))


class GwlbMaps:
    """Typed access to ``gwlb_flows``, ``gwlb_stats`` and ``gwlb_config``."""

    def __init__(self, fds: dict[str, int], *, owned: bool) -> None:
        self.fds = fds
        self._owned = owned
        self._ncpus = libbpf.num_possible_cpus()

    # -- config ------------------------------------------------------------------------

    def set_config(self, idle_timeout_ns: int, local_addr: str | None, flags: int) -> None:
        raw = ipaddress.IPv4Address(local_addr).packed if local_addr else b"\0" * 4
        cfg = GwlbConfigC(
            idle_timeout_ns=idle_timeout_ns,
            be_local_addr=int.from_bytes(raw, "little"),
            flags=flags,
        )
        libbpf.map_update(self.fds["gwlb_config"], ctypes.c_uint32(0), cfg)

    def set_sources(self, nets: Sequence[ipaddress.IPv4Network]) -> None:
        """Replace the allowed outer sources: the new ones in before the old ones out,
        so no allowed sender is refused meanwhile."""
        fd, leaf = self.fds["gwlb_sources"], ctypes.c_uint8(1)
        keys = [GwlbSourceKeyC(n.prefixlen, (ctypes.c_uint8 * 4)(*n.network_address.packed))
                for n in nets]  # fmt: skip
        for key in keys:
            libbpf.map_update(fd, key, leaf)
        wanted = {bytes(k) for k in keys}
        for old in self.sources_raw():
            if bytes(old) not in wanted:
                libbpf.map_delete(fd, old)

    def sources_raw(self) -> list[GwlbSourceKeyC]:
        out, key, nxt = [], None, GwlbSourceKeyC()
        while libbpf.map_get_next_key(self.fds["gwlb_sources"], key, nxt):
            out.append(GwlbSourceKeyC.from_buffer_copy(nxt))
            key = out[-1]
        return out

    def sources(self) -> list[ipaddress.IPv4Network]:
        return [
            ipaddress.IPv4Network((bytes(k.be_addr), k.prefixlen), strict=False)
            for k in self.sources_raw()
        ]

    def set_fastpath(self, prog_fd: int | None) -> None:
        """Tail-call target of a decapsulated inner IPv4 packet (the instance's
        ``xdp_gateway``), or None for the kernel path only."""
        slot = ctypes.c_uint32(0)
        if prog_fd is None:
            libbpf.map_delete(self.fds["gwlb_fastpath"], slot)
        else:
            libbpf.map_update(self.fds["gwlb_fastpath"], slot, ctypes.c_uint32(prog_fd))

    def fastpath_linked(self) -> bool:
        prog_id = ctypes.c_uint32()
        return libbpf.map_lookup(self.fds["gwlb_fastpath"], ctypes.c_uint32(0), prog_id)

    def config(self) -> GwlbConfigC:
        cfg = GwlbConfigC()
        libbpf.map_lookup(self.fds["gwlb_config"], ctypes.c_uint32(0), cfg)
        return cfg

    # -- flows -------------------------------------------------------------------------

    def lookup(self, key: bytes) -> StoredHeader | None:
        ckey = GwlbKeyC.from_buffer_copy(key)
        value = GwlbValueC()
        if not libbpf.map_lookup(self.fds["gwlb_flows"], ckey, value):
            return None
        return self._stored(ckey, value)

    @staticmethod
    def _stored(ckey: GwlbKeyC, v: GwlbValueC) -> StoredHeader:
        return StoredHeader(
            key=bytes(ckey),
            header=bytes(v.hdr[: v.hdr_len]),
            gwlb_addr=_addr(v.be_gwlb_addr),
            local_addr=_addr(v.be_local_addr),
            sport=int.from_bytes(int(v.be_sport).to_bytes(2, "little"), "big"),
            last_seen_ns=int(v.last_seen_ns),
        )

    def _keys(self) -> list[GwlbKeyC]:
        keys: list[GwlbKeyC] = []
        prev: GwlbKeyC | None = None
        while True:
            nxt = GwlbKeyC()
            if not libbpf.map_get_next_key(self.fds["gwlb_flows"], prev, nxt):
                return keys
            keys.append(nxt)
            prev = nxt

    def flows(self) -> list[StoredHeader]:
        out = []
        for ckey in self._keys():
            value = GwlbValueC()
            if libbpf.map_lookup(self.fds["gwlb_flows"], ckey, value):
                out.append(self._stored(ckey, value))
        return out

    def clear_flows(self) -> None:
        for ckey in self._keys():
            libbpf.map_delete(self.fds["gwlb_flows"], ckey)

    def age(self, key: bytes, seconds: float) -> None:
        """Move an entry's last_seen ``seconds`` back (forward when negative), for tests
        of the idle timeout.  last_seen is on the boot-time clock, so a machine up for
        less than ``seconds`` cannot hold the aged entry: ValueError then, never a
        clamped and younger entry (age by a little more than a short configured
        idle timeout instead of by the default's 350 s)."""
        ckey = GwlbKeyC.from_buffer_copy(key)
        value = GwlbValueC()
        if not libbpf.map_lookup(self.fds["gwlb_flows"], ckey, value):
            raise KeyError(f"gwlb_flows has no entry for key {key.hex()}")
        aged = value.last_seen_ns - int(seconds * 1e9)
        if not 0 < aged < 1 << 64:
            raise ValueError(
                f"cannot age a header seen at {value.last_seen_ns} ns after boot by "
                f"{seconds} s: the clock cannot represent the result; age by less than "
                "the time since boot"
            )
        value.last_seen_ns = aged
        libbpf.map_update(self.fds["gwlb_flows"], ckey, value)

    # -- counters ----------------------------------------------------------------------

    def counters(self) -> dict[GwlbReason, tuple[int, int]]:
        out: dict[GwlbReason, tuple[int, int]] = {}
        per_cpu = GwlbCounterC * self._ncpus
        for reason in GwlbReason:
            values = per_cpu()
            if libbpf.map_lookup(self.fds["gwlb_stats"], ctypes.c_uint32(reason), values):
                out[reason] = (sum(v.packets for v in values), sum(v.bytes for v in values))
            else:
                out[reason] = (0, 0)
        return out

    def clear_counters(self) -> None:
        per_cpu = GwlbCounterC * self._ncpus
        for index in range(GWLB_REASON_COUNT):
            libbpf.map_update(self.fds["gwlb_stats"], ctypes.c_uint32(index), per_cpu())

    def close(self) -> None:
        if self._owned:
            for fd in self.fds.values():
                os.close(fd)
        self.fds = {}
