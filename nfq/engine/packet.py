"""IPv4 / TCP / UDP / ICMP header parsing with ``struct`` over the queued bytes (RFC 791,
RFC 9293, RFC 768, RFC 792).

The hot path: one ``unpack_from`` per header, no per-packet objects beyond the
:class:`Packet` record. Anything not understood returns None and is accepted
uninspected by the caller (conntrack has already defragmented what FORWARD sees).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_ACK = 0x10

_IP = struct.Struct("!BBHHHBBH4s4s")
_PORTS = struct.Struct("!HH")
_TCP = struct.Struct("!HHIIBB")


@dataclass(slots=True)
class Packet:
    """One parsed IPv4 packet; ``payload`` is the L4 payload (a memoryview, no copy)."""

    src: bytes  # 4 bytes, network order
    dst: bytes
    proto: int
    sport: int
    dport: int
    flags: int  # TCP flags, 0 otherwise
    seq: int
    ack: int
    payload: memoryview
    raw: bytes


def parse(raw: bytes) -> Packet | None:
    """Parse an IPv4 packet as NFQUEUE delivers it (no link-layer header)."""
    if len(raw) < 20:
        return None
    vihl, _tos, total, _id, frag, _ttl, proto, _csum, src, dst = _IP.unpack_from(raw)
    if vihl >> 4 != 4:
        return None
    ihl = (vihl & 0x0F) * 4
    end = min(total, len(raw))
    if ihl < 20 or end < ihl or frag & 0x1FFF:
        return None
    view = memoryview(raw)
    if proto == IPPROTO_TCP:
        if end < ihl + 20:
            return None
        sport, dport, seq, ack, off, flags = _TCP.unpack_from(raw, ihl)
        doff = (off >> 4) * 4
        if doff < 20 or ihl + doff > end:
            return None
        return Packet(src, dst, proto, sport, dport, flags, seq, ack, view[ihl + doff : end], raw)
    if proto == IPPROTO_UDP:
        if end < ihl + 8:
            return None
        sport, dport = _PORTS.unpack_from(raw, ihl)
        return Packet(src, dst, proto, sport, dport, 0, 0, 0, view[ihl + 8 : end], raw)
    if proto == IPPROTO_ICMP:
        if end < ihl + 8:
            return None
        return Packet(src, dst, proto, 0, 0, 0, 0, 0, view[ihl + 8 : end], raw)
    return Packet(src, dst, proto, 0, 0, 0, 0, 0, view[ihl:end], raw)
