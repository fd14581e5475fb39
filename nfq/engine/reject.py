"""``reject``: answer the client the way Suricata's ``reject`` does by default
(``rejectsrc``): a TCP RST for TCP (RFC 9293 §3.10.7.4), ICMP port unreachable
otherwise (RFC 792), sent from the gateway with the server's address as source.
"""

from __future__ import annotations

import socket
import struct

from nfq.engine.packet import IPPROTO_ICMP, IPPROTO_TCP, TCP_ACK, TCP_RST, TCP_SYN, Packet


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _ip(src: bytes, dst: bytes, proto: int, body: bytes) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0x4000, 64, proto, 0, src, dst)
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + body


def tcp_rst(p: Packet) -> bytes:
    """The RST the client accepts: from the server, acknowledging what the client sent."""
    seg_len = len(p.payload) + (1 if p.flags & TCP_SYN else 0)
    ack = (p.seq + seg_len) & 0xFFFFFFFF
    seq = p.ack if p.flags & TCP_ACK else 0
    tcp = struct.pack("!HHIIBBHHH", p.dport, p.sport, seq, ack, 5 << 4, TCP_RST | TCP_ACK, 0, 0, 0)
    pseudo = struct.pack("!4s4sBBH", p.dst, p.src, 0, IPPROTO_TCP, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    return _ip(p.dst, p.src, IPPROTO_TCP, tcp)


def icmp_unreachable(p: Packet) -> bytes:
    ihl = (p.raw[0] & 0x0F) * 4
    quoted = p.raw[: ihl + 8]
    icmp = struct.pack("!BBHI", 3, 3, 0, 0) + quoted
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    return _ip(p.dst, p.src, IPPROTO_ICMP, icmp)


class Rejecter:
    """Sends reject packets through a raw socket (opened on first use)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None

    def send(self, p: Packet) -> None:
        if self._sock is None:
            self._sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        pkt = tcp_rst(p) if p.proto == IPPROTO_TCP else icmp_unreachable(p)
        self._sock.sendto(pkt, (socket.inet_ntoa(p.src), 0))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
