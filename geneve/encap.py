"""Outer IPv4 / UDP handling around a GENEVE header: the Python model of what the data
plane does to a packet (decapsulate on arrival, re-encapsulate a reply).

GWLB always uses an outer IPv4 header and UDP destination port 6081 (RFC 8926 3.3);
the inner payload is an IPv4 or IPv6 packet without an Ethernet header.  A reply goes
back with the outer addresses swapped, the same UDP source port, destination port 6081
and the byte-identical GENEVE header
(https://docs.aws.amazon.com/elasticloadbalancing/latest/gateway/introduction.html).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from geneve.aws import GwlbTlvs, validate
from geneve.codec import GENEVE_PORT, PROTO_IPV4, PROTO_IPV6, GeneveHeader
from geneve.errors import MalformedError, TruncatedError

IPV4_HEADER_LEN = 20
UDP_HEADER_LEN = 8
DEFAULT_TTL = 64


def ipv4_checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def inner_protocol(inner: bytes) -> int:
    """GENEVE protocol type for an inner IP packet (by its version nibble)."""
    version = inner[0] >> 4 if inner else 0
    if version == 4:
        return PROTO_IPV4
    if version == 6:
        return PROTO_IPV6
    raise MalformedError(f"inner packet version {version}: GWLB carries IPv4 (4) or IPv6 (6)")


def outer_ipv4(
    src: str, dst: str, payload_len: int, ident: int = 0, ttl: int = DEFAULT_TTL
) -> bytes:
    """An option-less outer IPv4 header (DF clear, protocol UDP) with its checksum."""
    hdr = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        IPV4_HEADER_LEN + payload_len,
        ident,
        0,
        ttl,
        17,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return hdr[:10] + struct.pack("!H", ipv4_checksum(hdr)) + hdr[12:]


def encapsulate(
    inner: bytes, header: GeneveHeader, src: str, dst: str, sport: int, ttl: int = DEFAULT_TTL
) -> bytes:
    """IPv4 / UDP(sport -> 6081, checksum 0) / GENEVE / inner, as an IP packet."""
    udp_len = UDP_HEADER_LEN + header.header_len + len(inner)
    udp = struct.pack("!HHHH", sport, GENEVE_PORT, udp_len, 0)
    return outer_ipv4(src, dst, udp_len, ttl=ttl) + udp + header.encode() + inner


@dataclass(frozen=True, slots=True)
class Decapsulated:
    """What the data plane learns from one GENEVE packet."""

    outer_src: str
    outer_dst: str
    sport: int
    header: GeneveHeader
    tlvs: GwlbTlvs
    inner: bytes

    def reply(self, inner: bytes | None = None) -> bytes:
        """The packet an appliance sends back: swapped outer addresses, same source
        port, destination 6081, byte-identical GENEVE header."""
        return encapsulate(
            self.inner if inner is None else inner,
            self.header,
            self.outer_dst,
            self.outer_src,
            self.sport,
        )


def decapsulate(packet: bytes, max_options: int | None = None) -> Decapsulated:
    """Validate an outer IPv4/UDP/GENEVE packet (no Ethernet) as the appliance does."""
    if len(packet) < IPV4_HEADER_LEN:
        raise TruncatedError("outer IPv4 header", IPV4_HEADER_LEN, len(packet))
    ihl = (packet[0] & 0x0F) * 4
    if packet[0] >> 4 != 4 or ihl < IPV4_HEADER_LEN or packet[9] != 17:
        raise MalformedError("outer header: GWLB sends IPv4 (ihl >= 5) carrying UDP")
    if len(packet) < ihl + UDP_HEADER_LEN:
        raise TruncatedError("outer UDP header", ihl + UDP_HEADER_LEN, len(packet))
    sport, dport = struct.unpack_from("!HH", packet, ihl)
    if dport != GENEVE_PORT:
        raise MalformedError(f"outer UDP destination port {dport}: GENEVE uses {GENEVE_PORT}")
    header, inner = GeneveHeader.decode(packet[ihl + UDP_HEADER_LEN :])
    tlvs = validate(header, max_options)
    return Decapsulated(
        outer_src=str(ipaddress.IPv4Address(packet[12:16])),
        outer_dst=str(ipaddress.IPv4Address(packet[16:20])),
        sport=sport,
        header=header,
        tlvs=tlvs,
        inner=inner,
    )
