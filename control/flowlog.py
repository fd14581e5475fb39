"""Flow logs: one record per ended conntrack entry, in AWS VPC Flow Logs version-5
field order ("Flow log records" / "Available fields" in the Amazon VPC user guide),
plus the gateway's NAT translation, written as JSON lines (:mod:`control.logfile`).

The source is ctnetlink's DESTROY event group on a socket of its own
(:mod:`xdp.ctevents` parses the entry), with ``nf_conntrack_acct`` (packet and byte
counters per direction) and ``nf_conntrack_timestamp`` (start and stop) turned on in
the namespace.  A reading thread turns events into records and offers them to the
writer's bounded queue.  ``sampling`` N keeps one flow in N (``sampled_out`` counts the
rest).

Reliable delivery (``reliable``, the default; conntrackd's ``NetlinkEventsReliable``):
the socket sets ``NETLINK_BROADCAST_ERROR`` and ``NETLINK_NO_ENOBUFS``.  When the kernel
cannot queue a DESTROY event to it (receive buffer full, or no memory for the message)
the failure reaches conntrack, which keeps the entry on its event-cache dying list and
has its event worker deliver it again later (``nf_conntrack_ecache.c``): the event waits
in the kernel instead of being lost, and the entry (still counted in
``nf_conntrack_count``) is freed once delivered.  Memory stays bounded by the conntrack
table itself; the price of a logger that lags is back-pressure on new flows when the
table fills (``docs/architecture.md``, "Flow logs").  The reading thread then waits up to
:data:`OFFER_WAIT_S` for room in the writer's queue rather than dropping; a writer that
stays stuck (a hung disk) turns waiting off until its queue has room again, so a dead
disk cannot hold conntrack entries for ever.  ``kernel_redelivered`` counts the
deliveries the kernel had to retry (``sk_drops`` of the socket, ``/proc/net/netlink``).

Without it (``reliable: false``) an overflowing socket loses events: ``kernel_lost`` is
the exact number of DESTROY events the kernel could not queue (``sk_drops``; the string
``unknown`` when the table cannot be read and an overflow was seen), and
``kernel_overflows`` the ENOBUFS errors that reported them (one error stands for many
events).  Records the writer's queue cannot take are ``dropped``.  Nothing is lost
without a counter saying so.

Packets the XDP fast path forwards bypass conntrack, so an offloaded flow's conntrack
counters hold only its slow-path share.  The offloader hands the flow table's counters
of both directions to :class:`xdp.fastpath_share.FastpathShares` when it removes the
pair; the record's ``packets``/``bytes`` (and the per-direction counters) are the sum of
both paths, ``fastpath-packets``/``fastpath-bytes`` the fast path's part.  A DESTROY
that arrives while the offloader still has the flow (it reads the same event on its own
socket) waits up to :data:`SHARE_WAIT_NS` in a bounded list; a flow whose share is not
known then says ``-`` (counted in ``fastpath_unknown``).
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
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
from xdp.fastpath_share import FastpathShares, Share
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
# A flush of 250,000 entries queues its DESTROY events faster than one thread turns
# them into records; ~1 KiB of socket memory each (``perf flowlog``: 64 MiB, which the
# kernel doubles for overhead, held ~127,000) -- charged only while events wait in it.
FLOW_RCVBUF = max(RCVBUF, 192 << 20)
NETLINK_BROADCAST_ERROR, NETLINK_NO_ENOBUFS = 4, 5  # linux/netlink.h, SOL_NETLINK
OFFER_WAIT_S = 1.0  # reliable: how long the reader waits for room in the writer's queue
SHARE_WAIT_NS = 1_000_000_000  # how long a record waits for the offloader's share
PENDING_MAX = 65536  # records waiting for it at most (more: written with ``-``)


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


def with_share(acct: Accounting, share: Share) -> Accounting:
    """Conntrack's counters plus what the fast path forwarded of the flow."""
    return replace(
        acct,
        packets_orig=acct.packets_orig + share.packets_orig,
        bytes_orig=acct.bytes_orig + share.bytes_orig,
        packets_reply=acct.packets_reply + share.packets_reply,
        bytes_reply=acct.bytes_reply + share.bytes_reply,
    )


def record(
    flow: CtFlow, acct: Accounting, known: Known, now_ns: int, share: Share | None = None
) -> dict[str, Any]:
    """The flow-log record of one ended entry: version-5 fields in order, then the
    gateway's own (NAT translation, per-direction counters, the fast path's share;
    ``share`` None: not known, ``-``)."""
    if share is not None:
        acct = with_share(acct, share)
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
    rec["fastpath-packets"] = share.packets if share is not None else "-"
    rec["fastpath-bytes"] = share.bytes if share is not None else "-"
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


def destroy_socket(rcvbuf: int = FLOW_RCVBUF, reliable: bool = True) -> socket.socket:
    """A ctnetlink socket of the current namespace subscribed to DESTROY only;
    ``reliable``: a failed delivery is reported to conntrack, which delivers the event
    again later (see the module's docstring)."""
    sock = _nlsocket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if reliable:
        sock.setsockopt(SOL_NETLINK, NETLINK_BROADCAST_ERROR, 1)
        sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
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
        reliable: bool = True,
        open_socket: Callable[[bool], socket.socket] | None = None,
        ship: Shipper | None = None,
        shares: FastpathShares | None = None,
    ) -> None:
        out = RecordLog(rotation, capacity, "spectra-flowlog-writer", ship)
        sock = (open_socket or (lambda r: destroy_socket(reliable=r)))(reliable)
        super().__init__(sock, out, "spectra-flowlog")
        self.reliable = reliable
        self.writer_stalls = 0
        self._stalled = False
        self.sampler = Sampler(sampling)
        self.known = known
        self.shares = shares
        self.events = 0
        self.fastpath_unknown = 0
        self._waiting: deque[tuple[int, CtFlow, Accounting]] = deque()

    def ingest(self, data: bytes, now_ns: int) -> None:
        shares = self.shares
        for flow, acct in destroyed(data):
            self.events += 1
            if not self.sampler.keep():
                if shares is not None:
                    shares.forget(flow.key)
                continue
            if shares is None:
                self._offer(record(flow, acct, self.known, now_ns))
                continue
            share = shares.take(flow.key)
            if isinstance(share, Share):
                self._offer(record(flow, acct, self.known, now_ns, share))
            elif len(self._waiting) < PENDING_MAX:
                self._waiting.append((now_ns + SHARE_WAIT_NS, flow, acct))
            else:
                self._give_up(flow, acct, now_ns)
        self.idle(now_ns)

    def idle(self, now_ns: int) -> None:
        """Write the waiting records whose share has come (or whose wait is over), in
        arrival order: the first one still waiting in time stops the walk, so a burst of
        DESTROY events costs one look per datagram, not one per waiting record."""
        shares, waiting = self.shares, self._waiting
        if shares is None:
            return
        while waiting:
            deadline, flow, acct = waiting[0]
            share = shares.take(flow.key)
            if isinstance(share, Share):
                self._offer(record(flow, acct, self.known, now_ns, share))
            elif now_ns >= deadline:
                self._give_up(flow, acct, now_ns)
            else:
                return
            waiting.popleft()

    def stop(self) -> None:
        super().stop_reading()
        for _, flow, acct in self._waiting:  # nothing waiting is lost at a stop
            self._give_up(flow, acct, time.time_ns())
        self._waiting.clear()
        self.out.stop()

    def _give_up(self, flow: CtFlow, acct: Accounting, now_ns: int) -> None:
        self.fastpath_unknown += 1
        if self.shares is not None:
            self.shares.forget(flow.key)
        self._offer(record(flow, acct, self.known, now_ns))

    def _offer(self, rec: dict[str, Any]) -> None:
        """Queue a record; reliable and the writer not known stuck: wait for room (the
        kernel keeps what the socket cannot take meanwhile)."""
        if not self.reliable:
            self.out.offer(rec)
        elif self._stalled:
            self._stalled = not self.out.offer(rec)
        elif not self.out.offer(rec, OFFER_WAIT_S):
            self._stalled = True
            self.writer_stalls += 1
            log.warning("flow log: writer stuck for %.1f s; dropping records", OFFER_WAIT_S)

    def kernel_counters(self) -> dict[str, Any]:
        """What the kernel could not deliver: retried (reliable) or lost."""
        drops = self.kernel_drops()
        if self.reliable:
            return {"kernel_lost": 0, "kernel_redelivered": drops if drops is not None else "-"}
        if drops is None:
            return {"kernel_lost": "unknown" if self.kernel_overflows else 0}
        return {"kernel_lost": drops}

    def counters(self) -> dict[str, Any]:
        return {
            "reliable": self.reliable,
            "flows": self.events,
            "sampled_out": self.sampler.skipped,
            "kernel_overflows": self.kernel_overflows,
            **self.kernel_counters(),
            "writer_stalls": self.writer_stalls,
            "reader_error": self.reader_error,
            "fastpath_waiting": len(self._waiting),
            "fastpath_unknown": self.fastpath_unknown,
            **self.out.counters(),
        }
