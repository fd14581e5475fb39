"""Conntrack over raw ctnetlink: events, filtered dumps, batched refreshes and parks.

The offloader's cost must follow changes, not flows (a NAT gateway holds hundreds of
thousands of entries). This module speaks the ctnetlink wire format itself
(``linux/netfilter/nfnetlink_conntrack.h``; netlink framing per RFC 3549):

* :class:`CtEvents` joins the event groups NEW, UPDATE and DESTROY with a large
  receive buffer and attaches a classic-BPF socket filter (:func:`candidate_filter`),
  so the kernel drops every event the offloader has no use for before it is copied to
  the socket: entries not NATed (neither source nor destination), updates not yet
  seen-reply + assured (ICMP: seen-reply), updates of flows held for inspection, and
  the echoes of the agent's own refreshes. What passes is parsed by :func:`parse`
  (``struct`` over a ``memoryview``, a few microseconds an event).
* :class:`CtRequests` dumps with the kernel's status filter (``CTA_STATUS`` +
  ``CTA_STATUS_MASK``: only NATed entries are sent, source-NATed then destination-NATed
  only, two disjoint dumps), reads one entry, and
  refreshes many entries' timeouts, or parks them (``CT_MARK_PARKED`` through
  ``CTA_MARK`` + ``CTA_MARK_MASK``), in one ``send`` (no ACKs: only failures answer).

An overflowing event socket (``ENOBUFS``) loses events; the caller resyncs from a dump.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address

from nfq.marks import CT_MARK_BYPASS, CT_MARK_INSPECT, CT_MARK_PARKED
from xdp.ctnetlink import next_hop
from xdp.offload import (
    IPS_ASSURED,
    IPS_DST_NAT,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
    CtFlow,
    CtTuple,
)
from xdp.records import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP

log = logging.getLogger("spectra.xdp")

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
SO_RCVBUFFORCE = 33
SO_ATTACH_FILTER = 26
NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE, NFNLGRP_CONNTRACK_DESTROY = 1, 2, 3
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 0, 1, 2
MSG_NEW = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW
MSG_GET = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET
MSG_DELETE = NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x400, 0x300
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
NFNETLINK_V0 = 0

CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_TIMEOUT, CTA_MARK, CTA_MARK_MASK, CTA_STATUS_MASK = 7, 8, 21, 26
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTO_ICMP_ID, CTA_PROTO_ICMP_TYPE, CTA_PROTO_ICMP_CODE = 4, 5, 6
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
ICMP_ECHO_REQUEST = 8

HDR = struct.Struct("=IHHII")  # nlmsghdr
NFGEN = struct.Struct("=BBH")  # nfgenmsg (res_id big-endian, always 0 here)
NLA = struct.Struct("=HH")
_BE32 = struct.Struct(">I")
_ntohs = socket.ntohs
NFGEN_LEN = 4
ATTRS_AT = HDR.size + NFGEN_LEN  # where a ctnetlink message's attributes start
RCVBUF = 64 << 20  # events of a burst of ~250,000 new flows
DEFAULT_BATCH = 512

# classic BPF (linux/filter.h)
BPF_LD, BPF_LDX, BPF_ALU, BPF_JMP, BPF_RET, BPF_MISC = 0x00, 0x01, 0x04, 0x05, 0x06, 0x07
BPF_W, BPF_H, BPF_B = 0x00, 0x08, 0x10
BPF_IMM, BPF_ABS, BPF_IND = 0x00, 0x20, 0x40
BPF_AND, BPF_JEQ, BPF_JSET, BPF_K, BPF_TAX = 0x50, 0x10, 0x40, 0x00, 0x00
SKF_AD_OFF, SKF_AD_NLATTR, SKF_AD_NLATTR_NEST = -0x1000, 12, 16
ACCEPT, DROP = 0xFFFFFFFF, 0


class CtNetlinkError(OSError):
    """A ctnetlink request failed; ``errno`` says why."""


@dataclass(frozen=True, slots=True)
class CtEvent:
    """One parsed conntrack message: ``kind`` is ``new``, ``update``, ``destroy`` or
    ``entry`` (a dump or get answer)."""

    kind: str
    flow: CtFlow


def candidate_filter(own_portid: int) -> list[tuple[int, int, int, int]]:
    """The classic-BPF program (code, jt, jf, k) that lets through only: DESTROY of a
    NATed entry (source, destination or both); NEW of a NATed entry (per-destination
    port use); UPDATE of a NATed entry that is seen-reply and assured (ICMP:
    seen-reply) and not held for inspection. Events caused by
    ``own_portid`` (the agent's refreshes) are dropped. Attributes are found with the
    kernel's netlink-attribute helpers (``SKF_AD_NLATTR``, ``SKF_AD_NLATTR_NEST``)."""
    ld_w, ld_h = BPF_LD | BPF_ABS | BPF_W, BPF_LD | BPF_ABS | BPF_H
    nlattr, nested = SKF_AD_OFF + SKF_AD_NLATTR, SKF_AD_OFF + SKF_AD_NLATTR_NEST
    ldx_imm, ld_imm, tax = BPF_LDX | BPF_W | BPF_IMM, BPF_LD | BPF_IMM, BPF_MISC | BPF_TAX
    ld_ind_w, ld_ind_b = BPF_LD | BPF_IND | BPF_W, BPF_LD | BPF_IND | BPF_B
    jeq, jset, ret = BPF_JMP | BPF_JEQ | BPF_K, BPF_JMP | BPF_JSET | BPF_K, BPF_RET | BPF_K
    st_m0, ld_m0, and_k = 0x02, BPF_LD | BPF_W | 0x60, BPF_ALU | BPF_AND | BPF_K
    want = IPS_SEEN_REPLY
    # (code, k, jump-if-true label, jump-if-false label); labels are names or None
    src: list[tuple[str | None, int, int, str | None, str | None]] = [
        (None, ld_w, 12, None, None),  # nlmsg_pid (host order): who caused the event
        (None, jeq, socket.htonl(own_portid), "drop", None),
        (None, ld_imm, ATTRS_AT, None, None),
        (None, ldx_imm, CTA_STATUS, None, None),
        (None, ld_w, nlattr, None, None),
        (None, jeq, 0, "accept", None),  # no status: let Python judge
        (None, tax, 0, None, None),
        (None, ld_ind_w, 4, None, None),  # A = status
        (None, jset, IPS_SRC_NAT | IPS_DST_NAT, None, "drop"),
        (None, st_m0, 0, None, None),
        (None, ld_h, 4, None, None),  # nlmsg_type (host order, read big-endian)
        (None, jeq, socket.htons(MSG_DELETE), "accept", None),
        (None, ld_h, 6, None, None),  # nlmsg_flags: NLM_F_CREATE marks a NEW event
        (None, jset, socket.htons(NLM_F_CREATE), "accept", None),
        (None, ld_m0, 0, None, None),
        (None, and_k, want, None, None),
        (None, jeq, want, None, "drop"),
        (None, ld_m0, 0, None, None),
        (None, jset, IPS_ASSURED, "mark", None),
        (None, ld_imm, ATTRS_AT, None, None),  # not assured: ICMP only
        (None, ldx_imm, CTA_TUPLE_ORIG, None, None),
        (None, ld_w, nlattr, None, None),
        (None, jeq, 0, "drop", None),
        (None, ldx_imm, CTA_TUPLE_PROTO, None, None),
        (None, ld_w, nested, None, None),
        (None, jeq, 0, "drop", None),
        (None, ldx_imm, CTA_PROTO_NUM, None, None),
        (None, ld_w, nested, None, None),
        (None, jeq, 0, "drop", None),
        (None, tax, 0, None, None),
        (None, ld_ind_b, 4, None, None),
        (None, jeq, IPPROTO_ICMP, None, "drop"),
        ("mark", ld_imm, ATTRS_AT, None, None),  # held for inspection stays in the kernel
        (None, ldx_imm, CTA_MARK, None, None),
        (None, ld_w, nlattr, None, None),
        (None, jeq, 0, "accept", None),  # no mark attribute: mark 0
        (None, tax, 0, None, None),
        (None, ld_ind_w, 4, None, None),
        (None, and_k, CT_MARK_INSPECT | CT_MARK_BYPASS, None, None),
        (None, jeq, CT_MARK_INSPECT, "drop", "accept"),
        ("accept", ret, ACCEPT, None, None),
        ("drop", ret, DROP, None, None),
    ]
    labels = {name: i for i, (name, *_) in enumerate(src) if name}

    def rel(i: int, label: str | None) -> int:
        return 0 if label is None else labels[label] - i - 1

    return [
        (code, rel(i, jt), rel(i, jf), k & 0xFFFFFFFF) for i, (_, code, k, jt, jf) in enumerate(src)
    ]


def _pack_filter(prog: list[tuple[int, int, int, int]]) -> tuple[bytes, object]:
    import ctypes

    insns = b"".join(struct.pack("=HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(insns, len(insns))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    return fprog, buf  # keep buf alive while the kernel copies it


def _attrs(buf: memoryview, off: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload offset, payload end) of each attribute in ``buf[off:end]``."""
    unpack = NLA.unpack_from
    while off + 4 <= end:
        length, kind = unpack(buf, off)
        if length < 4:
            return
        yield kind & NLA_TYPE_MASK, off + 4, off + length
        off += (length + 3) & ~3


# The layout the kernel writes for an IPv4 TCP/UDP tuple (ctnetlink_dump_tuples): the
# attribute types and the values at fixed offsets of the tuple's payload, one unpack.
_TUPLE_LAYOUT = struct.Struct("=2xH2xH4s2xH4s2xH2xHB3x2xHH2x2xHH2x")
_TUPLE_EXPECTED = (
    CTA_TUPLE_IP | NLA_F_NESTED, CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_TUPLE_PROTO | NLA_F_NESTED,
    CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT,
)  # fmt: skip
_ADDRESSES: dict[bytes, IPv4Address] = {}


class CachedIPv4Address(IPv4Address):
    """An ``IPv4Address`` that keeps its hash and packed form: the offloader hashes
    (dict keys) and packs (map keys) the same few addresses for every flow, and the
    standard class recomputes both in Python each time. Equal to, and hashing like,
    the plain ``IPv4Address`` of the same value."""

    __slots__ = ("_hash", "_raw")

    def __init__(self, address: bytes | int | str) -> None:
        super().__init__(address)
        self._raw = int(self).to_bytes(4, "big")
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash

    @property
    def packed(self) -> bytes:
        return self._raw


def _address(raw: bytes) -> IPv4Address:
    """``IPv4Address`` of 4 packed bytes, from a bounded cache (few addresses recur)."""
    addr = _ADDRESSES.get(raw)
    if addr is None:
        if len(_ADDRESSES) >= 65536:
            _ADDRESSES.clear()
        addr = _ADDRESSES[raw] = CachedIPv4Address(raw)
    return addr


def _tuple(buf: memoryview, off: int, end: int) -> tuple[int, CtTuple] | None:
    if end - off >= 48:
        t1, t2, src, t3, dst, t4, t5, proto, t6, sport, t7, dport = _TUPLE_LAYOUT.unpack_from(
            buf, off
        )
        if (t1, t2, t3, t4, t5, t6, t7) == _TUPLE_EXPECTED:
            return proto, CtTuple(_address(src), _address(dst), _ntohs(sport), _ntohs(dport))
    return _tuple_any(buf, off, end)


def _tuple_any(buf: memoryview, off: int, end: int) -> tuple[int, CtTuple] | None:
    """:func:`_tuple` for any layout (ICMP, or attributes in another order)."""
    saddr = daddr = None
    proto = sport = dport = 0
    icmp_type = -1
    for kind, a, b in _attrs(buf, off, end):
        if kind == CTA_TUPLE_IP:
            for k2, a2, _ in _attrs(buf, a, b):
                if k2 == CTA_IP_V4_SRC:
                    saddr = _address(bytes(buf[a2 : a2 + 4]))
                elif k2 == CTA_IP_V4_DST:
                    daddr = _address(bytes(buf[a2 : a2 + 4]))
        elif kind == CTA_TUPLE_PROTO:
            for k2, a2, _ in _attrs(buf, a, b):
                if k2 == CTA_PROTO_NUM:
                    proto = buf[a2]
                elif k2 in (CTA_PROTO_SRC_PORT, CTA_PROTO_ICMP_ID):
                    sport = buf[a2] << 8 | buf[a2 + 1]
                elif k2 == CTA_PROTO_DST_PORT:
                    dport = buf[a2] << 8 | buf[a2 + 1]
                elif k2 == CTA_PROTO_ICMP_TYPE:
                    icmp_type = buf[a2]
    if saddr is None or daddr is None:
        return None  # not IPv4
    if proto == IPPROTO_ICMP and icmp_type not in (-1, ICMP_ECHO_REQUEST, 0):
        return None
    return proto, CtTuple(saddr, daddr, sport, dport)


def parse_message(buf: memoryview, off: int, end: int) -> CtFlow | None:
    """The offloader's view of one ctnetlink conntrack message (``buf[off:end]`` is the
    whole message); None for what it never offloads (not IPv4, not TCP/UDP/ICMP echo)."""
    orig = reply = None
    proto = status = mark = timeout = 0
    tcp_state = None
    be32, unpack = _BE32.unpack_from, NLA.unpack_from
    a = off + ATTRS_AT
    while a + 4 <= end:  # the attributes, inline (:func:`_attrs`: one call each)
        length, kind = unpack(buf, a)
        if length < 4:
            break
        kind &= NLA_TYPE_MASK
        b = a + length
        a += 4
        if kind == CTA_TUPLE_ORIG:
            got = _tuple(buf, a, b)
            if got is None:
                return None
            proto, orig = got
        elif kind == CTA_TUPLE_REPLY:
            got = _tuple(buf, a, b)
            if got is None:
                return None
            reply = got[1]
        elif kind == CTA_STATUS:
            status = be32(buf, a)[0]
        elif kind == CTA_MARK:
            mark = be32(buf, a)[0]
        elif kind == CTA_TIMEOUT:
            timeout = be32(buf, a)[0]
        elif kind == CTA_PROTOINFO:
            for k2, a2, b2 in _attrs(buf, a, b):
                if k2 == CTA_PROTOINFO_TCP:
                    for k3, a3, _ in _attrs(buf, a2, b2):
                        if k3 == CTA_PROTOINFO_TCP_STATE:
                            tcp_state = buf[a3]
        a = (b + 3) & ~3
    if orig is None or reply is None or proto not in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP):
        return None
    if proto == IPPROTO_ICMP:
        orig, reply = (
            CtTuple(orig.saddr, orig.daddr, orig.sport, 0),
            CtTuple(reply.saddr, reply.daddr, reply.sport, 0),
        )
    return CtFlow(proto, orig, reply, status, tcp_state, mark, timeout)


def messages(data: bytes) -> Iterator[tuple[memoryview, int, int, int]]:
    """``(buffer, type, start, end)`` of each netlink message in one datagram (for the
    readers of other groups: the flow log's DESTROY socket, the firewall log's NFLOG)."""
    buf = memoryview(data)
    off, size = 0, len(data)
    while off + HDR.size <= size:
        length, kind, _, _, _ = HDR.unpack_from(buf, off)
        if length < HDR.size:
            return
        yield buf, kind, off, min(off + length, size)
        off += (length + 3) & ~3


def parse(data: bytes) -> Iterator[CtEvent | int]:
    """The conntrack messages in one datagram; an ``int`` is a netlink error number
    (0: the end of a dump)."""
    buf = memoryview(data)
    off, size = 0, len(data)
    while off + HDR.size <= size:
        length, kind, flags, _, _ = HDR.unpack_from(buf, off)
        if length < HDR.size:
            return
        end = min(off + length, size)
        if kind == NLMSG_DONE:
            yield 0
        elif kind == NLMSG_ERROR:
            yield -struct.unpack_from("=i", buf, off + HDR.size)[0]
        elif kind in (MSG_NEW, MSG_DELETE):
            flow = parse_message(buf, off, end)
            if flow is not None:
                if kind == MSG_DELETE:
                    what = "destroy"
                elif flags & NLM_F_CREATE:
                    what = "new"
                else:
                    what = "update"
                yield CtEvent(what, flow)
        off += (length + 3) & ~3


def _nlsocket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         NETLINK_NETFILTER)  # fmt: skip
    sock.bind((0, 0))
    return sock


class CtEvents:
    """The conntrack event socket of the current network namespace, filtered to the
    offloader's candidates (:func:`candidate_filter`)."""

    def __init__(self, ignore_portid: int, rcvbuf: int = RCVBUF) -> None:
        self.sock = _nlsocket()
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
        except PermissionError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        fprog, keep = _pack_filter(candidate_filter(ignore_portid))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        del keep
        for group in (NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_UPDATE,
                      NFNLGRP_CONNTRACK_DESTROY):  # fmt: skip
            self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
        self.sock.setblocking(False)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self, limit: int) -> tuple[list[CtEvent], bool]:
        """Up to about ``limit`` pending events without blocking; True when the socket
        overflowed (events were lost: resync)."""
        out: list[CtEvent] = []
        while len(out) < limit:
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    return out, True
                raise
            out.extend(e for e in parse(data) if isinstance(e, CtEvent))
        return out, False

    def close(self) -> None:
        self.sock.close()


def _msg(kind: int, flags: int, seq: int, payload: bytes) -> bytes:
    body = NFGEN.pack(socket.AF_INET, NFNETLINK_V0, 0) + payload
    return HDR.pack(HDR.size + len(body), kind, flags, seq, 0) + body


def _nla(kind: int, payload: bytes) -> bytes:
    raw = NLA.pack(4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


_TUPLE_ATTR = struct.Struct("=HHHHHH4sHH4sHHHHB3xHH2s2xHH2s2x")


def tuple_attr(kind: int, proto: int, t: CtTuple) -> bytes:
    """``CTA_TUPLE_ORIG``/``REPLY`` for ``t`` (ICMP: echo request id); TCP and UDP in
    one ``struct`` pack (the keepalive builds one per refresh)."""
    if proto != IPPROTO_ICMP:
        return _TUPLE_ATTR.pack(
            52, kind | NLA_F_NESTED, 20, CTA_TUPLE_IP | NLA_F_NESTED,
            8, CTA_IP_V4_SRC, t.saddr.packed, 8, CTA_IP_V4_DST, t.daddr.packed,
            28, CTA_TUPLE_PROTO | NLA_F_NESTED, 5, CTA_PROTO_NUM, proto,
            6, CTA_PROTO_SRC_PORT, t.sport.to_bytes(2, "big"),
            6, CTA_PROTO_DST_PORT, t.dport.to_bytes(2, "big"),
        )  # fmt: skip
    return _tuple_attr_any(kind, proto, t)


def _tuple_attr_any(kind: int, proto: int, t: CtTuple) -> bytes:
    """:func:`tuple_attr` attribute by attribute (any protocol)."""
    ip = _nla(CTA_IP_V4_SRC, t.saddr.packed) + _nla(CTA_IP_V4_DST, t.daddr.packed)
    l4 = _nla(CTA_PROTO_NUM, bytes([proto]))
    if proto == IPPROTO_ICMP:
        l4 += _nla(CTA_PROTO_ICMP_ID, struct.pack(">H", t.sport))
        l4 += _nla(CTA_PROTO_ICMP_TYPE, bytes([ICMP_ECHO_REQUEST]))
        l4 += _nla(CTA_PROTO_ICMP_CODE, b"\0")
    else:
        l4 += _nla(CTA_PROTO_SRC_PORT, struct.pack(">H", t.sport))
        l4 += _nla(CTA_PROTO_DST_PORT, struct.pack(">H", t.dport))
    return _nla(
        kind | NLA_F_NESTED,
        _nla(CTA_TUPLE_IP | NLA_F_NESTED, ip) + _nla(CTA_TUPLE_PROTO | NLA_F_NESTED, l4),
    )


class CtRequests:
    """Requests to ctnetlink on their own socket (its port id is what the event filter
    drops, so the agent's refreshes do not come back as events)."""

    def __init__(self) -> None:
        self.sock = _nlsocket()
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        self.portid: int = self.sock.getsockname()[0]
        self._seq = 0
        self.refresh_failed = 0

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def dump(self) -> Iterator[CtFlow]:
        """Every NATed IPv4 entry (the kernel filters by status): the source-NATed ones
        (destination-NATed too or not), then those destination-NATed only."""
        yield from self._dump(IPS_SRC_NAT, IPS_SRC_NAT)
        yield from self._dump(IPS_DST_NAT, IPS_SRC_NAT | IPS_DST_NAT)

    def _dump(self, status: int, mask: int) -> Iterator[CtFlow]:
        filt = _nla(CTA_STATUS, struct.pack(">I", status))
        filt += _nla(CTA_STATUS_MASK, struct.pack(">I", mask))
        self.sock.setblocking(True)
        self.sock.send(_msg(MSG_GET, NLM_F_REQUEST | NLM_F_DUMP, self._next_seq(), filt))
        while True:
            data = self.sock.recv(1 << 20)
            for item in parse(data):
                if isinstance(item, CtEvent):
                    yield item.flow
                elif item == 0:
                    return
                elif item != 0:
                    raise CtNetlinkError(item, f"conntrack dump: {os.strerror(item)}")

    def get(self, proto: int, orig: CtTuple) -> CtFlow | None:
        """One entry by its original tuple; None when it is gone."""
        self._drain()
        payload = tuple_attr(CTA_TUPLE_ORIG, proto, orig)
        self.sock.setblocking(True)
        self.sock.send(_msg(MSG_GET, NLM_F_REQUEST | NLM_F_ACK, self._next_seq(), payload))
        found: CtFlow | None = None
        while True:
            for item in parse(self.sock.recv(1 << 16)):
                if isinstance(item, CtEvent):
                    found = item.flow
                else:
                    return found

    def refresh(self, items: Iterable[tuple[CtFlow, int]], batch: int = DEFAULT_BATCH) -> int:
        """Set each entry's timeout (seconds), ``batch`` messages a ``send``; no ACK is
        asked for: only failures (entry gone meanwhile) answer. Returns how many sent."""
        return self._send_all(
            (tuple_attr(CTA_TUPLE_ORIG, ct.proto, ct.orig)
             + _nla(CTA_TIMEOUT, struct.pack(">I", timeout)) for ct, timeout in items),
            batch,
        )  # fmt: skip

    def park(self, flows: Iterable[CtFlow], batch: int = DEFAULT_BATCH) -> int:
        """Set ``CT_MARK_PARKED`` on each entry (its other mark bits kept: ``CTA_MARK``
        with ``CTA_MARK_MASK``), ``batch`` a ``send``; the forward chain clears it at
        the flow's next packet and that mark change comes back as an event."""
        mark = _nla(CTA_MARK, struct.pack(">I", CT_MARK_PARKED))
        mark += _nla(CTA_MARK_MASK, struct.pack(">I", CT_MARK_PARKED))
        return self._send_all(
            (tuple_attr(CTA_TUPLE_ORIG, ct.proto, ct.orig) + mark for ct in flows), batch
        )

    def _send_all(self, payloads: Iterable[bytes], batch: int) -> int:
        """Each payload as a ctnetlink update (no ACK), ``batch`` messages a ``send``."""
        self._drain()
        sent, chunk = 0, []
        for payload in payloads:
            chunk.append(_msg(MSG_NEW, NLM_F_REQUEST, self._next_seq(), payload))
            if len(chunk) >= batch:
                sent += self._send(chunk)
                chunk = []
        if chunk:
            sent += self._send(chunk)
        return sent

    def _send(self, chunk: list[bytes]) -> int:
        self.sock.setblocking(True)
        self.sock.send(b"".join(chunk))
        self._drain()
        return len(chunk)

    def _drain(self) -> None:
        """Read the failures of earlier refreshes (ENOENT: the entry died first)."""
        self.sock.setblocking(False)
        while True:
            try:
                data = self.sock.recv(1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            for item in parse(data):
                if isinstance(item, int) and item:
                    self.refresh_failed += 1

    def close(self) -> None:
        self.sock.close()


NEXT_HOP_TTL_NS = 5_000_000_000
NEXT_HOP_MEMORY = 65536


class EventKernel:
    """:class:`xdp.offload_events.CtSource` for the current network namespace: the
    filtered event socket, a request socket, and next hops over rtnetlink (pyroute2,
    cached for a few seconds per address: many flows share few next hops)."""

    def __init__(self, rcvbuf: int = RCVBUF) -> None:
        from pyroute2 import IPRoute

        self.requests = CtRequests()
        self.event_socket = CtEvents(self.requests.portid, rcvbuf)
        self._ipr = IPRoute()
        self._hops: dict[IPv4Address, tuple[int, tuple[int, str]]] = {}

    @property
    def refresh_failed(self) -> int:
        return self.requests.refresh_failed

    def fileno(self) -> int:
        return self.event_socket.fileno()

    def events(self, limit: int) -> tuple[list[CtEvent], bool]:
        return self.event_socket.read(limit)

    def dump(self) -> Iterator[CtFlow]:
        return self.requests.dump()

    def get(self, proto: int, orig: CtTuple) -> CtFlow | None:
        return self.requests.get(proto, orig)

    def refresh(self, items: Iterable[tuple[CtFlow, int]]) -> int:
        return self.requests.refresh(items)

    def park(self, flows: Iterable[CtFlow]) -> int:
        return self.requests.park(flows)

    def next_hop(self, dst: IPv4Address) -> tuple[int, str] | None:
        import time

        now = time.monotonic_ns()
        cached = self._hops.get(dst)
        if cached is not None and now - cached[0] < NEXT_HOP_TTL_NS:
            return cached[1]
        hop = next_hop(self._ipr, dst)
        if len(self._hops) >= NEXT_HOP_MEMORY:
            self._hops.clear()
        if hop is not None:  # an unresolved neighbour is asked again next time
            self._hops[dst] = (now, hop)
        return hop

    def close(self) -> None:
        self.event_socket.close()
        self.requests.close()
        self._ipr.close()
