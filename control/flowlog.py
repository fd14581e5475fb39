"""Flow logs: one record per ended conntrack entry, in AWS VPC Flow Logs version-5
field order ("Flow log records" / "Available fields" in the Amazon VPC user guide),
plus the gateway's NAT translation, written as JSON lines (:mod:`control.logfile`).

The source is ctnetlink's DESTROY event group on a socket of its own
(:mod:`xdp.ctevents` parses the entry), with ``nf_conntrack_acct`` (packet and byte
counters per direction) and ``nf_conntrack_timestamp`` (start and stop) turned on in
the namespace.  A reading thread turns events into records and offers them to the
writer's bounded queue: under pressure records are dropped and counted (``dropped``;
``kernel_overflows`` when the socket itself overflowed, ENOBUFS), never silently lost.
``sampling`` N keeps one flow in N (``sampled_out`` counts the rest).

Packets the XDP fast path forwards bypass conntrack, so an offloaded flow's counters
hold only its slow-path share; ``fastpath-packets`` says ``-`` (not known here).
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from control.logfile import NetlinkLogger, RecordLog, Rotation
from control.logship import Shipper
from xdp.ctevents import (
    ATTRS_AT,
    MSG_DELETE,
    NETLINK_ADD_MEMBERSHIP,
    NFNLGRP_CONNTRACK_DESTROY,
    RCVBUF,
    SO_RCVBUFFORCE,
    SOL_NETLINK,
    _attrs,
    _nlsocket,
    messages,
    parse_message,
)
from xdp.offload import IPS_DST_NAT, IPS_SRC_NAT, CtFlow

log = logging.getLogger("spectra.control")

CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_ID, CTA_TIMESTAMP = 9, 10, 12, 20
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2
CTA_TIMESTAMP_START, CTA_TIMESTAMP_STOP = 1, 2
NS = 1_000_000_000
# VPC Flow Logs version 5, in order
V5_FIELDS = (
    "version", "account-id", "interface-id", "srcaddr", "dstaddr", "srcport", "dstport",
    "protocol", "packets", "bytes", "start", "end", "action", "log-status", "vpc-id",
    "subnet-id", "instance-id", "tcp-flags", "type", "pkt-srcaddr", "pkt-dstaddr", "region",
    "az-id", "sublocation-type", "sublocation-id", "pkt-src-aws-service",
    "pkt-dst-aws-service", "flow-direction", "traffic-path",
)  # fmt: skip
_BE64 = struct.Struct(">Q")


@dataclass(frozen=True, slots=True)
class Accounting:
    """What ctnetlink says of an entry beyond the offloader's :class:`CtFlow`."""

    packets_orig: int = 0
    bytes_orig: int = 0
    packets_reply: int = 0
    bytes_reply: int = 0
    start_ns: int | None = None
    stop_ns: int | None = None


@dataclass(frozen=True, slots=True)
class Known:
    """The version-5 fields the gateway knows of itself (``-`` for the others)."""

    instance_id: str = "-"
    interface_id: str = "-"
    region: str = "-"


def _counters(buf: memoryview, a: int, b: int) -> tuple[int, int]:
    packets = octets = 0
    for kind, x, _ in _attrs(buf, a, b):
        if kind == CTA_COUNTERS_PACKETS:
            packets = _BE64.unpack_from(buf, x)[0]
        elif kind == CTA_COUNTERS_BYTES:
            octets = _BE64.unpack_from(buf, x)[0]
    return packets, octets


def accounting(buf: memoryview, off: int, end: int) -> Accounting:
    """Counters and timestamps of the ctnetlink message ``buf[off:end]``."""
    orig = reply = (0, 0)
    start = stop = None
    for kind, a, b in _attrs(buf, off + ATTRS_AT, end):
        if kind == CTA_COUNTERS_ORIG:
            orig = _counters(buf, a, b)
        elif kind == CTA_COUNTERS_REPLY:
            reply = _counters(buf, a, b)
        elif kind == CTA_TIMESTAMP:
            for k2, x, _ in _attrs(buf, a, b):
                if k2 == CTA_TIMESTAMP_START:
                    start = _BE64.unpack_from(buf, x)[0]
                elif k2 == CTA_TIMESTAMP_STOP:
                    stop = _BE64.unpack_from(buf, x)[0]
    return Accounting(orig[0], orig[1], reply[0], reply[1], start, stop)


def destroyed(data: bytes) -> list[tuple[CtFlow, Accounting]]:
    """The ended IPv4 TCP/UDP/ICMP entries of one ctnetlink datagram."""
    out: list[tuple[CtFlow, Accounting]] = []
    for buf, kind, off, end in messages(data):
        if kind == MSG_DELETE and (flow := parse_message(buf, off, end)) is not None:
            out.append((flow, accounting(buf, off, end)))
    return out


def record(flow: CtFlow, acct: Accounting, known: Known, now_ns: int) -> dict[str, Any]:
    """The flow-log record of one ended entry: version-5 fields in order, then the
    gateway's own (NAT translation, per-direction counters)."""
    o, r = flow.orig, flow.reply
    ingress = bool(flow.status & IPS_DST_NAT)
    stop = acct.stop_ns or now_ns
    rec: dict[str, Any] = dict.fromkeys(V5_FIELDS, "-")
    rec.update(
        {
            "version": 5,
            "interface-id": known.interface_id,
            "srcaddr": str(o.saddr),
            "dstaddr": str(o.daddr),
            "srcport": o.sport,
            "dstport": o.dport,
            "protocol": flow.proto,
            "packets": acct.packets_orig + acct.packets_reply,
            "bytes": acct.bytes_orig + acct.bytes_reply,
            "start": acct.start_ns // NS if acct.start_ns else "-",
            "end": stop // NS,
            "action": "ACCEPT",
            "log-status": "OK",
            "instance-id": known.instance_id,
            "type": "IPv4",
            "pkt-srcaddr": str(o.saddr),
            "pkt-dstaddr": str(o.daddr),
            "region": known.region,
            "flow-direction": "ingress" if ingress else "egress",
        }
    )
    rec["nat-srcaddr"] = str(r.daddr) if flow.status & IPS_SRC_NAT else "-"
    rec["nat-srcport"] = r.dport if flow.status & IPS_SRC_NAT else "-"
    rec["nat-dstaddr"] = str(r.saddr) if ingress else "-"
    rec["nat-dstport"] = r.sport if ingress else "-"
    rec["packets-orig"], rec["bytes-orig"] = acct.packets_orig, acct.bytes_orig
    rec["packets-reply"], rec["bytes-reply"] = acct.packets_reply, acct.bytes_reply
    rec["fastpath-packets"] = "-"
    return rec


class Sampler:
    """Keeps one flow in ``every`` (deterministic: the first, then every N-th)."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.seen = 0
        self.skipped = 0

    def keep(self) -> bool:
        self.seen += 1
        if (self.seen - 1) % self.every == 0:
            return True
        self.skipped += 1
        return False


def destroy_socket(rcvbuf: int = RCVBUF) -> socket.socket:
    """A ctnetlink socket of the current namespace subscribed to DESTROY only."""
    sock = _nlsocket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_CONNTRACK_DESTROY)
    sock.settimeout(0.2)
    return sock


class FlowLogger(NetlinkLogger):
    """The DESTROY socket, its reading thread, and the record log it feeds."""

    def __init__(
        self,
        rotation: Rotation,
        *,
        sampling: int,
        capacity: int,
        known: Known,
        open_socket: Callable[[], socket.socket] = destroy_socket,
        ship: Shipper | None = None,
    ) -> None:
        out = RecordLog(rotation, capacity, "spectra-flowlog-writer", ship)
        super().__init__(open_socket(), out, "spectra-flowlog")
        self.sampler = Sampler(sampling)
        self.known = known
        self.events = 0

    def ingest(self, data: bytes, now_ns: int) -> None:
        for flow, acct in destroyed(data):
            self.events += 1
            if self.sampler.keep():
                self.out.offer(record(flow, acct, self.known, now_ns))

    def counters(self) -> dict[str, Any]:
        return {
            "flows": self.events,
            "sampled_out": self.sampler.skipped,
            "kernel_overflows": self.kernel_overflows,
            **self.out.counters(),
        }
