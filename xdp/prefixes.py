"""IPv4 prefixes as plain ``(address, length)`` integer pairs, for lists of 100,000.

``ipaddress.IPv4Network`` costs ~15 us to build and more to compare; a blocklist of
100,000 CIDRs (the size of a threat-intelligence feed) must parse, check and load in
well under a second, so IP sets travel as :data:`Prefix` tuples: the address as a
host-order integer (the packet's bytes read big-endian) and the prefix length,
with no host bits set (RFC 4632 section 3.1 notation).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from ipaddress import IPv4Network

Prefix = tuple[int, int]  # (host-order address, prefix length 0..32)


def parse_prefix(text: str) -> Prefix:
    """``"10.0.0.0/8"`` -> ``(0x0A000000, 8)``; a bare address is a /32.  Raises
    ValueError naming what is wrong (not dotted-quad, length, host bits)."""
    addr, _, length = text.partition("/")
    parts = addr.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
        raise ValueError(f"{text!r} is not an IPv4 CIDR like 10.0.0.0/8")
    try:
        value = int.from_bytes(socket.inet_aton(addr), "big")
    except OSError:
        raise ValueError(f"{text!r}: an octet is above 255") from None
    plen = 32
    if length or text.endswith("/"):
        if not length.isdigit() or int(length) > 32:
            raise ValueError(f"{text!r}: expected a prefix length 0..32")
        plen = int(length)
    if value & ~prefix_mask(plen) & 0xFFFFFFFF:
        raise ValueError(f"{text!r} has host bits set")
    return value, plen


def prefix_mask(plen: int) -> int:
    """Netmask of a prefix length as a host-order integer."""
    return (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF


def prefix_end(prefix: Prefix) -> int:
    """Last address of the prefix."""
    return prefix[0] | (~prefix_mask(prefix[1]) & 0xFFFFFFFF)


def prefix_str(prefix: Prefix) -> str:
    return f"{socket.inet_ntoa(prefix[0].to_bytes(4, 'big'))}/{prefix[1]}"


def from_network(net: IPv4Network) -> Prefix:
    return int(net.network_address), net.prefixlen


def overlaps(prefixes: Sequence[Prefix]) -> list[tuple[int, int]]:
    """(index, index of a prefix it overlaps) for each overlapping prefix, by index.

    Sorted by (start, length), a prefix overlaps another exactly when it starts at or
    before the furthest end seen so far (prefixes either nest or are disjoint)."""
    order = sorted(range(len(prefixes)), key=prefixes.__getitem__)
    found: list[tuple[int, int]] = []
    end, owner = -1, -1
    for i in order:
        start, plen = prefixes[i]
        if start <= end:
            found.append((i, owner))
        else:
            end, owner = start | (0xFFFFFFFF >> plen), i
    return sorted(found)
