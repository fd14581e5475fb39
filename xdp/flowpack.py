"""``struct flow_key`` / ``struct flow_value`` (``xdp/bpf/maps.h``) as packed bytes.

The event offloader installs tens of thousands of flows a second at NAT-gateway scale;
building a :class:`xdp.records.FlowKey`/``FlowEntry`` (validated) and then a ctypes
structure per direction cost most of its ~45 us a flow. Here each direction is one
``struct.pack`` straight from the conntrack tuple (addresses and ports in network byte
order, as the program reads them from the packet), a batch is one ``bytes`` joined for
one ``BPF_MAP_UPDATE_BATCH``, and the packed key is what the offloader keeps per flow
for its keepalive lookups and its deletes. Same layout as the ctypes mirrors in
:mod:`xdp.maps` (``tests/bpf/test_layout.py`` and the unit tests check both).
"""

from __future__ import annotations

import socket
import struct
from functools import lru_cache
from ipaddress import IPv4Address

from xdp.records import FlowEntry, FlowKey

# ifindex (host order), saddr, daddr (network), sport, dport (network), proto, pad
KEY = struct.Struct("=I4s4sHHB3x")
# new saddr/daddr, new sport/dport (network), egress ifindex, src/dst MAC, flags,
# deny_epoch, reserved, packets, bytes, last_seen_ns (host order)
VALUE = struct.Struct("=4s4sHHI6s6sIIIQQQ")
KEY_SIZE, VALUE_SIZE = KEY.size, VALUE.size
_htons, _ntohs = socket.htons, socket.ntohs


@lru_cache(maxsize=1024)  # the offloader writes the same few MACs for every flow
def mac_bytes(mac: str) -> bytes:
    """``02:00:00:00:00:01`` -> 6 bytes."""
    return bytes.fromhex(mac.replace(":", ""))


def key(ifindex: int, saddr: bytes, daddr: bytes, sport: int, dport: int, proto: int) -> bytes:
    """One direction's key from packed addresses and host-order ports."""
    return KEY.pack(ifindex, saddr, daddr, _htons(sport), _htons(dport), proto)


def pack_key(k: FlowKey) -> bytes:
    return key(k.ifindex, k.saddr.packed, k.daddr.packed, k.sport, k.dport, k.proto)


def unpack_key(raw: bytes) -> FlowKey:
    ifindex, saddr, daddr, sport, dport, proto = KEY.unpack(raw)
    return FlowKey(ifindex, IPv4Address(saddr), IPv4Address(daddr), _ntohs(sport),
                   _ntohs(dport), proto)  # fmt: skip


def value(
    saddr: bytes, daddr: bytes, sport: int, dport: int, egress: int, src_mac: bytes,
    dst_mac: bytes, flags: int = 0,
) -> bytes:  # fmt: skip
    """A fresh direction's value (counters and last seen 0: the program writes them)."""
    return VALUE.pack(saddr, daddr, _htons(sport), _htons(dport), egress, src_mac, dst_mac,
                      flags, 0, 0, 0, 0, 0)  # fmt: skip


def pack_value(e: FlowEntry) -> bytes:
    return VALUE.pack(
        e.new_saddr.packed, e.new_daddr.packed, _htons(e.new_sport), _htons(e.new_dport),
        e.egress_ifindex, mac_bytes(e.src_mac), mac_bytes(e.dst_mac), e.flags, 0, 0,
        e.packets, e.bytes, e.last_seen_ns,
    )  # fmt: skip


def unpack_value(raw: bytes) -> FlowEntry:
    (saddr, daddr, sport, dport, egress, src, dst, flags, _, _, packets, octets,
     last_seen) = VALUE.unpack(raw)  # fmt: skip
    return FlowEntry(
        IPv4Address(saddr), IPv4Address(daddr), _ntohs(sport), _ntohs(dport), egress,
        src.hex(":"), dst.hex(":"), flags, packets, octets, last_seen,
    )  # fmt: skip
