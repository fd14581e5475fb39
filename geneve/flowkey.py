"""The inner-flow key under which the data plane stores each GENEVE header: the
Python model of ``struct gwlb_key`` in ``xdp/include/spectra/gwlb_types.h``.

Symmetric: both directions of a flow canonicalise to the same (lo, hi) endpoint pair,
ordered by (address bytes, port); ``dir`` records which endpoint sent the packet that
carried the header (0: the lo endpoint).  Return traffic that never came through the
GWLB (two-arm NAT) finds the header of the opposite direction; traffic the kernel
sends back into the GWLB unchanged (one-arm) finds its own.  ICMP echo uses the
identifier as both ports so request and reply share a key.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
_ICMP_ECHO_TYPES = {IPPROTO_ICMP: (8, 0), IPPROTO_ICMPV6: (128, 129)}
KEY_FORMAT = "=BBBB HH 16s 16s"  # family, proto, dir, pad, be ports (raw), addrs
KEY_SIZE = struct.calcsize(KEY_FORMAT)
FAMILY_IPV4 = 4
FAMILY_IPV6 = 6


@dataclass(frozen=True, slots=True)
class InnerFlow:
    """Addresses (packed, 4 or 16 bytes), protocol and ports of an inner packet."""

    family: int
    proto: int
    saddr: bytes
    daddr: bytes
    sport: int
    dport: int

    @classmethod
    def parse(cls, packet: bytes) -> InnerFlow | None:
        """The flow of an inner IPv4/IPv6 packet; None when even the IP header is cut."""
        if not packet:
            return None
        version = packet[0] >> 4
        if version == 4 and len(packet) >= 20:
            ihl = (packet[0] & 0x0F) * 4
            proto = packet[9]
            saddr, daddr = packet[12:16], packet[16:20]
            frag = struct.unpack_from("!H", packet, 6)[0] & 0x1FFF
            l4 = packet[ihl:] if ihl >= 20 and not frag else b""
            family = FAMILY_IPV4
        elif version == 6 and len(packet) >= 40:
            proto = packet[6]
            saddr, daddr = packet[8:24], packet[24:40]
            l4 = packet[40:]
            family = FAMILY_IPV6
        else:
            return None
        sport = dport = 0
        if proto in (IPPROTO_TCP, IPPROTO_UDP) and len(l4) >= 4:
            sport, dport = struct.unpack_from("!HH", l4, 0)
        elif proto in _ICMP_ECHO_TYPES and len(l4) >= 8 and l4[0] in _ICMP_ECHO_TYPES[proto]:
            sport = dport = struct.unpack_from("!H", l4, 4)[0]
        return cls(family, proto, bytes(saddr), bytes(daddr), sport, dport)

    def key(self) -> tuple[bytes, int]:
        """(canonical key bytes without the dir byte set, dir)."""
        a = (self.saddr.ljust(16, b"\0"), self.sport)
        b = (self.daddr.ljust(16, b"\0"), self.dport)
        lo, hi, direction = (a, b, 0) if a <= b else (b, a, 1)
        raw = struct.pack(
            KEY_FORMAT,
            self.family,
            self.proto,
            0,
            0,
            _raw_be16(lo[1]),
            _raw_be16(hi[1]),
            lo[0],
            hi[0],
        )
        return raw, direction

    def key_bytes(self, direction: int | None = None) -> bytes:
        """The exact ``struct gwlb_key`` bytes (``direction`` defaults to this packet's)."""
        raw, own = self.key()
        d = own if direction is None else direction
        return raw[:2] + bytes([d]) + raw[3:]

    def reversed(self) -> InnerFlow:
        return InnerFlow(self.family, self.proto, self.daddr, self.saddr, self.dport, self.sport)

    def __str__(self) -> str:
        s = ipaddress.ip_address(self.saddr)
        d = ipaddress.ip_address(self.daddr)
        return f"{self.proto} {s}:{self.sport} -> {d}:{self.dport}"


def _raw_be16(port: int) -> int:
    """A port as the native u16 that holds its network-order bytes (struct ``=H``)."""
    return int(struct.unpack("=H", struct.pack("!H", port))[0])
