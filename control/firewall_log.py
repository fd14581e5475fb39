"""Firewall logs: the packets the nftables deny rules drop, as JSON lines naming the
rule that matched.

Each deny rule of the rendered ruleset is preceded by a rate-limited
``log prefix "<rule path>" group N`` twin (:mod:`control.steps.nftables`), so the kernel
sends the first bytes of each denied packet to NFLOG group N (nfnetlink_log,
``linux/netfilter/nfnetlink_log.h``; netlink framing per RFC 3549).  This module binds
that group on a socket of its own, parses each message (prefix, interfaces, timestamp,
the IPv4 header and ports of the payload) and writes one record per packet, in the
shape of Suricata's EVE ``drop`` records (the fields the alert stream
:mod:`control.alerts` keeps), through :mod:`control.logfile` (bounded, counted drops).
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Address
from typing import Any

from control.logfile import NetlinkLogger, RecordLog, Rotation
from control.logship import Shipper
from xdp.ctevents import (
    HDR,
    NLA,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_ERROR,
    _attrs,
    _nlsocket,
    messages,
)

log = logging.getLogger("spectra.control")

NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = NFNL_SUBSYS_ULOG << 8 | 0
NFULNL_MSG_CONFIG = NFNL_SUBSYS_ULOG << 8 | 1
NFULA_CFG_CMD, NFULA_CFG_MODE = 1, 2
NFULNL_CFG_CMD_BIND, NFULNL_CFG_CMD_UNBIND = 1, 2
NFULNL_COPY_PACKET = 2
COPY_RANGE = 128  # enough for an IPv4 header with options and the L4 ports
NFULA_TIMESTAMP, NFULA_IFINDEX_INDEV, NFULA_IFINDEX_OUTDEV = 3, 4, 5
NFULA_PAYLOAD, NFULA_PREFIX = 9, 10
PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP"}
_TS = struct.Struct(">QQ")
_BE32 = struct.Struct(">I")


class NflogError(OSError):
    """Binding the NFLOG group failed; ``errno`` says why."""


@dataclass(frozen=True, slots=True)
class Denied:
    """One packet NFLOG reported."""

    prefix: str
    src: IPv4Address
    dst: IPv4Address
    proto: int
    sport: int | None
    dport: int | None
    indev: int | None
    outdev: int | None
    time_us: int | None


def _config(group: int, attrs: bytes, seq: int) -> bytes:
    body = struct.pack("=BB", socket.AF_UNSPEC, 0) + struct.pack(">H", group) + attrs
    flags = NLM_F_REQUEST | NLM_F_ACK
    return HDR.pack(HDR.size + len(body), NFULNL_MSG_CONFIG, flags, seq, 0) + body


def _nla(kind: int, payload: bytes) -> bytes:
    raw = NLA.pack(4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _ipv4(payload: bytes) -> tuple[IPv4Address, IPv4Address, int, int | None, int | None] | None:
    if len(payload) < 20 or payload[0] >> 4 != 4:
        return None
    ihl = (payload[0] & 15) * 4
    proto = payload[9]
    src, dst = IPv4Address(payload[12:16]), IPv4Address(payload[16:20])
    sport = dport = None
    if proto in (6, 17) and len(payload) >= ihl + 4:
        sport, dport = struct.unpack_from(">HH", payload, ihl)
    elif proto == 1 and len(payload) >= ihl + 2:
        sport, dport = payload[ihl], payload[ihl + 1]  # ICMP type and code
    return src, dst, proto, sport, dport


def parse(data: bytes) -> list[Denied]:
    """The IPv4 packets of one NFLOG datagram (others are skipped)."""
    out: list[Denied] = []
    for buf, kind, off, end in messages(data):
        got = _packet(buf, off + HDR.size + 4, end) if kind == NFULNL_MSG_PACKET else None
        if got is not None:
            out.append(got)
    return out


def _packet(buf: memoryview, start: int, end: int) -> Denied | None:
    prefix, payload = "", b""
    indev = outdev = time_us = None
    for kind, a, b in _attrs(buf, start, end):
        if kind == NFULA_PREFIX:
            prefix = bytes(buf[a:b]).split(b"\0", 1)[0].decode(errors="replace")
        elif kind == NFULA_PAYLOAD:
            payload = bytes(buf[a:b])
        elif kind == NFULA_IFINDEX_INDEV:
            indev = _BE32.unpack_from(buf, a)[0]
        elif kind == NFULA_IFINDEX_OUTDEV:
            outdev = _BE32.unpack_from(buf, a)[0]
        elif kind == NFULA_TIMESTAMP:
            sec, usec = _TS.unpack_from(buf, a)
            time_us = sec * 1_000_000 + usec
    ip = _ipv4(payload)
    if ip is None:
        return None
    return Denied(prefix.strip(), *ip, indev, outdev, time_us)


def _ifname(index: int | None) -> str | None:
    if index is None:
        return None
    try:
        return socket.if_indextoname(index)
    except OSError:
        return str(index)


def record(
    d: Denied, comments: Mapping[str, str], now_us: int, source: str = "nftables"
) -> dict[str, Any]:
    """An EVE-shaped ``drop`` record naming the rule (its path and comment); ``source``
    says which layer dropped it (``nftables``, or ``xdp`` for the fast path's deny
    list)."""
    when = datetime.fromtimestamp((d.time_us or now_us) / 1e6, UTC)
    icmp = d.proto == 1
    return {
        "timestamp": when.isoformat(timespec="microseconds"),
        "event_type": "drop",
        "source": source,
        "rule": d.prefix,
        "comment": comments.get(d.prefix),
        "action": "blocked",
        "src_ip": str(d.src),
        "src_port": None if icmp else d.sport,
        "dest_ip": str(d.dst),
        "dest_port": None if icmp else d.dport,
        "proto": PROTOCOLS.get(d.proto, str(d.proto)),
        **({"icmp_type": d.sport, "icmp_code": d.dport} if icmp else {}),
        "in_iface": _ifname(d.indev),
        "out_iface": _ifname(d.outdev),
    }


def bind_group(group: int) -> socket.socket:
    """An NFLOG socket bound to ``group``, copying the first :data:`COPY_RANGE` bytes."""
    sock = _nlsocket()
    attrs = _nla(NFULA_CFG_CMD, bytes([NFULNL_CFG_CMD_BIND]))
    mode = _nla(NFULA_CFG_MODE, struct.pack(">IBx", COPY_RANGE, NFULNL_COPY_PACKET))
    for seq, msg in enumerate((attrs, mode), 1):
        sock.send(_config(group, msg, seq))
        answer = sock.recv(4096)
        kind = HDR.unpack_from(answer, 0)[1]
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", answer, HDR.size)[0]
            if code:
                sock.close()
                raise NflogError(code, f"NFLOG group {group}: {os.strerror(code)}")
    sock.settimeout(0.2)
    return sock


class FirewallLogger(NetlinkLogger):
    """The NFLOG socket, its reading thread, and the record log it feeds."""

    def __init__(
        self,
        rotation: Rotation,
        *,
        group: int,
        comments: Mapping[str, str],
        capacity: int = 65536,
        ship: Shipper | None = None,
    ) -> None:
        out = RecordLog(rotation, capacity, "spectra-firewall-log-writer", ship)
        super().__init__(bind_group(group), out, "spectra-firewall-log")
        self.comments = dict(comments)
        self.packets = 0

    def ingest(self, data: bytes, now_ns: int) -> None:
        for d in parse(data):
            self.packets += 1
            self.out.offer(record(d, self.comments, now_ns // 1000))

    def counters(self) -> dict[str, Any]:
        own: dict[str, Any] = {"packets": self.packets, "kernel_overflows": self.kernel_overflows}
        return {**own, **self.out.counters()}
