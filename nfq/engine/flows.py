"""Per-flow state: who is the client, TCP handshake progress, in-order reassembly of
each direction up to the stream depth, application fields, and the flow's verdict.

Reassembly keeps one contiguous buffer per direction from the first byte seen: in-order
segments are appended, retransmitted overlaps contribute only their new tail, segments
from the future wait (at most ``MAX_OOO`` of them) until the gap is filled.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import IntEnum

from nfq.engine.packet import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, Packet

MAX_OOO = 32
SEQ_MOD = 1 << 32
_flow_ids = itertools.count(1)


class State(IntEnum):
    """What the inspector has decided about a flow."""

    INSPECTING = 0
    DROP = 1
    BYPASS = 2


@dataclass(slots=True)
class Direction:
    """One direction of a flow: reassembled bytes and the payload patterns seen so far."""

    data: bytearray = field(default_factory=bytearray)
    next_seq: int | None = None
    ooo: dict[int, bytes] = field(default_factory=dict)
    hits: set[int] = field(default_factory=set)
    scanned: int = 0  # bytes of ``data`` already scanned
    seen: int = 0  # payload bytes seen (UDP/ICMP: counted, not kept)
    full: bool = False


@dataclass(slots=True)
class Flow:
    """A bidirectional flow, keyed by its sorted 5-tuple."""

    proto: int
    client: tuple[bytes, int]
    established: bool
    created: float
    last_seen: float
    flow_id: int = field(default_factory=lambda: next(_flow_ids))
    to_server: Direction = field(default_factory=Direction)
    to_client: Direction = field(default_factory=Direction)
    syn_ack: bool = False
    closing: bool = False
    state: State = State.INSPECTING
    app: str | None = None
    app_fields: dict[str, bytes] = field(default_factory=dict)
    app_hits: dict[str, set[int]] = field(default_factory=dict)
    http_pos: int = 0
    sni_done: bool = False
    fired: set[int] = field(default_factory=set)
    pending: set[int] = field(default_factory=set)


def flow_key(p: Packet) -> tuple[int, bytes, int, bytes, int]:
    a, b = (p.src, p.sport), (p.dst, p.dport)
    if a <= b:
        return (p.proto, p.src, p.sport, p.dst, p.dport)
    return (p.proto, p.dst, p.dport, p.src, p.sport)


def new_flow(p: Packet, now: float) -> Flow:
    """The client is the SYN's sender; without a SYN (midstream, UDP) the sender of the
    first packet, unless it comes from a well-known port to an ephemeral one."""
    if p.proto == 6 and p.flags & TCP_SYN:
        client = (p.src, p.sport) if not p.flags & TCP_ACK else (p.dst, p.dport)
        return Flow(p.proto, client, False, now, now)
    client = (p.src, p.sport)
    if p.sport < 1024 <= p.dport:
        client = (p.dst, p.dport)
    return Flow(p.proto, client, p.proto == 6, now, now)


def track_tcp(flow: Flow, d: Direction, p: Packet, to_server: bool, depth: int) -> int:
    """Update handshake state and reassemble; returns the number of new in-order bytes."""
    flags = p.flags
    if flags & TCP_SYN:
        if not to_server and flags & TCP_ACK:
            flow.syn_ack = True
        d.next_seq = (p.seq + 1) % SEQ_MOD
        return 0
    if to_server and flags & TCP_ACK and flow.syn_ack:
        flow.established = True
    if flags & (TCP_FIN | TCP_RST):
        flow.closing = True
    payload = p.payload
    if not payload:
        return 0
    if d.next_seq is None:
        d.next_seq = p.seq
    before = len(d.data)
    _place(d, p.seq, bytes(payload), depth)
    return len(d.data) - before


def _room(d: Direction, depth: int) -> int:
    if depth <= 0:
        return 1 << 62
    return depth - len(d.data)


def _place(d: Direction, seq: int, data: bytes, depth: int) -> None:
    assert d.next_seq is not None
    off = (seq - d.next_seq) % SEQ_MOD
    if off >= SEQ_MOD // 2:  # starts before next_seq: keep the new tail only
        back = SEQ_MOD - off
        if back >= len(data):
            return
        data = data[back:]
        off = 0
    if off > 0:
        if len(d.ooo) < MAX_OOO:
            d.ooo[seq] = data
        return
    _append(d, data, depth)
    while d.ooo and not d.full:
        for s in list(d.ooo):
            rel = (s - d.next_seq) % SEQ_MOD
            if rel == 0 or rel >= SEQ_MOD // 2:
                seg = d.ooo.pop(s)
                back = 0 if rel == 0 else SEQ_MOD - rel
                if back < len(seg):
                    _append(d, seg[back:], depth)
                break
        else:
            return


def _append(d: Direction, data: bytes, depth: int) -> None:
    assert d.next_seq is not None
    room = _room(d, depth)
    d.data += data[: max(room, 0)]
    d.next_seq = (d.next_seq + len(data)) % SEQ_MOD
    if depth > 0 and len(d.data) >= depth:
        d.full = True
        d.ooo.clear()
