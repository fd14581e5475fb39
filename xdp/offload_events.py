"""The event-driven offloader: work in proportion to conntrack changes, not its size.

Same decisions as :class:`xdp.offload.Offloader` (what may bypass, both directions as
the kernel translated them, kernel conntrack the source of truth), fed differently:

* conntrack **events** (:mod:`xdp.ctevents`), already filtered in the kernel to
  candidates, drive installs and removals: an update that makes a NATed flow assured
  installs it (one batch map update per step); a TCP state change away from
  ESTABLISHED (the kernel saw FIN/RST: it owns the teardown) or a destroy removes it;
* **destination NAT** (port forwards, load-balancer listeners, hairpin): the two sides
  are placed by the kernel's routes toward the client and the chosen backend
  (:func:`xdp.offload.nat_sides`; the next-hop lookups a source-NATed flow makes
  anyway, so no extra lookup); hairpin legs are flagged ``FLOW_F_DENY_TRANSLATED``;
* **what is worth offloading**: assured flows only (ICMP echo: replied). The kernel
  marks UDP assured when a packet arrives more than 2 s after the first reply (a
  stream), TCP when the handshake completes: a one-packet-each-way UDP flow never
  reaches Python, let alone the map;
* a **full dump** (kernel-filtered to source-NATed entries) only at start, after the
  event socket overflowed (``ENOBUFS``) and when a GWLB interface is linked: counted
  per reason in ``resyncs``;
* **keepalive** on a timer wheel: each offloaded flow is looked at shortly before its
  conntrack entry would expire (and once more just before), never every sync. When
  the fast path carried packets since the last refresh, the entry's timeout is set to
  what the kernel would have left it (its timeout minus the time since the last
  packet), in batches of one ``send``; a quiet flow is left to expire, and its
  destroy event removes it. A flow idle for ``idle_seconds`` leaves the fast path and
  is **parked**: its conntrack entry gets ``CT_MARK_PARKED``, which the forward chain
  clears at the flow's next packet; that mark change is an UPDATE event, so a parked
  flow that becomes active again returns to the fast path at once, not at a resync;
* installs are **packed**: each direction's key and value one ``struct.pack`` straight
  from the conntrack tuple (:mod:`xdp.flowpack`), a step's installs one batch map
  update, and the packed keys are what each offloaded flow keeps for its keepalive
  lookups and deletes (no per-flow ``FlowKey``/``FlowEntry``/ctypes objects);
* per-destination NAT port use is kept from NEW and DESTROY events;
* **a takeover's flows**: conntrackd commits the synced entries into the new leader's
  table already replied and assured, so their NEW event is the only one that may ever
  come and it installs them; the new leader has not forwarded to their workloads or next
  hop yet, so a flow refused for a missing neighbour entry is tried again once a second
  (until an event of its own or its destroy replaces it).

:class:`OffloadWorker` runs it in its own thread, bounded per step, so the agent loop
(config poll and apply, API, status) never waits for it.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Protocol

from nfq.marks import CT_MARK_GWLB
from xdp.ctevents import CtEvent
from xdp.fastpath_share import FastpathShares, Share
from xdp.flowpack import key as packed_key
from xdp.flowpack import mac_bytes, pack_key, unpack_key
from xdp.flowpack import value as packed_value
from xdp.histogram import Histogram
from xdp.offload import (
    IPS_ASSURED,
    IPS_DST_NAT,
    IPS_DYING,
    IPS_SEEN_REPLY,
    IPS_SRC_NAT,
    NAT_PORTS_TOP,
    REFUSED_MEMORY,
    TCP_CONNTRACK_ESTABLISHED,
    BulkTcp,
    CtFlow,
    CtTuple,
    Interface,
    Offloaded,
    OffloadStats,
    Timeouts,
    flow_keys,
    nat_sides,
    why_not_offloadable,
)
from xdp.records import (
    FLOW_F_CLOSING,
    FLOW_F_DENY_TRANSLATED,
    FLOW_F_GWLB,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    FlowEntry,
    FlowKey,
)

log = logging.getLogger("spectra.xdp")

CtKey = tuple[int, CtTuple]
NatKey = tuple[int, IPv4Address, IPv4Address, int]
MAX_EVENTS_PER_STEP = 4096
INSTALL_BATCH = 1024  # installs are written at least every this many events
MAX_CHECKS_PER_STEP = 8192
STEP_SECONDS = 0.05  # the longest a step waits for events
LAST_CHANCE_S = 1.5  # a quiet flow is looked at once more this long before expiry
NAT_TOP_EVERY_NS = 2_000_000_000
BORN_ESTABLISHED = IPS_SEEN_REPLY | IPS_ASSURED  # a NEW event of a committed entry


class CtSource(Protocol):
    """What the event offloader needs of the kernel (:class:`xdp.ctevents.EventKernel`
    in production, a fake in unit tests)."""

    def fileno(self) -> int: ...
    def events(self, limit: int) -> tuple[list[CtEvent], bool]: ...
    def dump(self) -> Iterable[CtFlow]: ...
    def get(self, proto: int, orig: CtTuple) -> CtFlow | None: ...
    def refresh(self, items: Sequence[tuple[CtFlow, int]]) -> int: ...
    def park(self, flows: Sequence[CtFlow]) -> int: ...
    def next_hop(self, dst: IPv4Address) -> tuple[int, str] | None: ...


class BatchFlowTable(Protocol):
    """What the event offloader needs of :class:`xdp.Dataplane`."""

    def add_packed_flows(self, keys: bytes, values: bytes) -> None: ...
    def delete_packed_flow(self, key: bytes) -> bool: ...
    def packed_flow(self, key: bytes) -> FlowEntry | None: ...
    def flow_activity(self, key: bytes) -> tuple[int, int] | None: ...
    def flows(self) -> list[tuple[FlowKey, FlowEntry]]: ...


@dataclass(slots=True)
class Tracked:
    """An offloaded flow: its pair's packed keys (forward, return), the conntrack entry
    as last known, the wheel slot."""

    keys: tuple[bytes, bytes]
    ct: CtFlow
    refreshed_ns: int  # the fast path's last packet the kernel was told of
    gwlb: bool = False  # a two-arm GWLB flow (forward key on the GWLB interface)
    due: int = 0  # wheel second of the next look
    expires_ns: int = 0  # when the kernel entry runs out unless refreshed
    bulk: Offloaded | None = None  # bulk-TCP window (``bulk_tcp="kernel"`` only)

    def flow_keys(self) -> tuple[FlowKey, FlowKey]:
        return unpack_key(self.keys[0]), unpack_key(self.keys[1])


def plan_packed(
    ct: CtFlow, inside: Interface, outside: Interface, to_internet: bytes,
    to_workload: bytes, *, gwlb: bool = False, hairpin: bool = False,
) -> tuple[bytes, bytes, bytes, bytes]:  # fmt: skip
    """:func:`xdp.offload.plan` packed: (forward key, return key, forward value, return
    value), the MACs as 6 bytes; ``inside``/``outside`` are the client's and the
    server's sides, ``to_internet``/``to_workload`` the next hops toward the server and
    toward the client (:func:`xdp.offload.nat_sides` for a destination-NATed flow)."""
    o, r, p = ct.orig, ct.reply, ct.proto
    os_, od, rs, rd = o.saddr.packed, o.daddr.packed, r.saddr.packed, r.daddr.packed
    icmp = p == IPPROTO_ICMP
    both = FLOW_F_DENY_TRANSLATED if hairpin else 0
    return (
        packed_key(inside.ifindex, os_, od, o.sport, o.dport, p),
        packed_key(outside.ifindex, rs, rd, r.sport, r.dport, p),
        packed_value(rd, rs, r.sport if icmp else r.dport, 0 if icmp else r.sport,
                     outside.ifindex, mac_bytes(outside.mac), to_internet, both),
        packed_value(od, os_, o.sport if icmp else o.dport, 0 if icmp else o.sport,
                     inside.ifindex, mac_bytes(inside.mac), to_workload,
                     both | (FLOW_F_GWLB if gwlb else 0)),
    )  # fmt: skip


class EventOffloader:
    """Keeps the XDP flow table a faithful, bounded subset of kernel conntrack, from
    conntrack events; call :meth:`step` repeatedly (one thread)."""

    def __init__(
        self,
        table: BatchFlowTable,
        kernel: CtSource,
        inside: Interface,
        outside: Interface,
        capacity: int,
        *,
        idle_seconds: float = 300.0,
        timeouts: Timeouts | None = None,
        bulk_tcp: BulkTcp = "fast_path",
        shares: FastpathShares | None = None,
    ) -> None:
        self.table, self.kernel = table, kernel
        self.shares = shares  # the fast path's share of each flow, for the flow log
        self.inside, self.outside = inside, outside
        self.max_entries = max(0, capacity - max(2, capacity // 64))
        self.idle_ns = int(idle_seconds * 1e9)
        self.timeouts = timeouts or Timeouts.from_sysctl()
        self.bulk_tcp = bulk_tcp
        self.gwlb: Interface | None = None
        self._gwlb_seen: Interface | None = None
        self.tracked: dict[CtKey, Tracked] = {}
        self.kernel_only: set[CtKey] = set()
        self.refused: dict[CtKey, str] = {}
        self.idle_parked = 0
        self.unparked = 0  # parked flows back on the fast path (their mark change)
        self._parked: set[CtKey] = set()  # bounded by REFUSED_MEMORY
        # flows refused for want of a neighbour entry, tried again once a second
        self._awaiting_hop: dict[CtKey, CtFlow] = {}  # bounded by REFUSED_MEMORY
        self._hop_retry_s = 0
        self.wheel: defaultdict[int, list[CtKey]] = defaultdict(list)
        self._wheel_at = 0
        self.nat_ports: Counter[NatKey] = Counter()
        self.stats = OffloadStats()
        self.resyncs: Counter[str] = Counter()
        self.events = 0
        self.refreshes = 0
        self.destroyed_while_active = 0
        self.install_delay_ns: list[int] = []  # event seen -> map written, last 1024
        self.install_delay = Histogram()  # the same, cumulative, for /metrics
        self.lock = threading.Lock()
        self._pending: list[tuple[CtFlow, int]] = []  # (ct, event seen at)
        self._needs_resync: str | None = "start"
        self._started_ns = 0  # real monotonic time of the current step's start
        self.gwlb_tracked = 0  # offloaded GWLB flows
        self._nat_top_at = -NAT_TOP_EVERY_NS
        self._last_snapshot: dict[str, Any] = {}

    # ---- the loop -------------------------------------------------------------------

    def step(self, now_ns: int | None = None, wait: float = 0.0) -> None:
        """Wait up to ``wait`` seconds for events, then handle a bounded amount of work:
        pending events, due keepalives, a resync when one is needed."""
        if wait > 0 and not self._needs_resync:
            select.select([self.kernel], [], [], wait)
        self._started_ns = time.monotonic_ns()
        now_ns = self._started_ns if now_ns is None else now_ns
        with self.lock:
            if self.gwlb != self._gwlb_seen:
                self._gwlb_changed()
            if self._needs_resync:
                self._resync(self._needs_resync, now_ns)
                self._needs_resync = None
            events, overflowed = self.kernel.events(MAX_EVENTS_PER_STEP)
            self.events += len(events)
            for i, event in enumerate(events, 1):
                self._on_event(event, now_ns)
                if i % INSTALL_BATCH == 0:  # the first flows need not wait for the last
                    self._flush_installs(now_ns)
            self._retry_hops(now_ns)  # after the events: a newer one replaces the waiting
            self._flush_installs(now_ns)
            if overflowed:
                log.warning("conntrack event socket overflowed: resync from a dump")
                self._needs_resync = "enobufs"
            self._keepalive(now_ns)
            self.stats.active = len(self.tracked)

    def _retry_hops(self, now_ns: int) -> None:
        """Once a second, the flows refused for a missing neighbour entry are considered
        again: an entry committed by conntrackd on a takeover arrives before this
        gateway ever forwarded to its workload or its next hop (the first packets on the
        kernel path resolve them), and no later event may come for it."""
        second = now_ns // 1_000_000_000
        if not self._awaiting_hop or second == self._hop_retry_s:
            return
        self._hop_retry_s = second
        waiting, self._awaiting_hop = self._awaiting_hop, {}
        self._pending += ((ct, self._started_ns) for ct in waiting.values())

    def _on_event(self, event: CtEvent, now_ns: int) -> None:
        ct = event.flow
        key = ct.key
        self._awaiting_hop.pop(key, None)  # this event's flow is the one to judge
        if event.kind == "destroy":
            self._count_nat(ct, -1)
            if ct.proto == IPPROTO_TCP and ct.tcp_state == TCP_CONNTRACK_ESTABLISHED:
                self.stats.idle_timeouts += 1  # timed out open, never closed
            self._parked.discard(key)
            tracked = self.tracked.get(key)
            if tracked is not None:
                self._note_destroyed(tracked, now_ns)
                self._remove(key, "conntrack_destroyed")
            self.refused.pop(key, None)
            self.kernel_only.discard(key)
            return
        if event.kind == "new":
            self._count_nat(ct, +1)
            if ct.status & BORN_ESTABLISHED != BORN_ESTABLISHED:
                return  # a first packet: the update that makes it assured decides
            # an entry created already replied and assured: conntrackd's commit of the
            # synced flows on a takeover (or `conntrack -I`); no update need ever
            # follow it, so it is judged now
        tracked = self.tracked.get(key)
        if tracked is not None:
            if ct.status & IPS_DYING:
                self._remove(key, "conntrack_destroyed")
            elif (
                ct.proto == IPPROTO_TCP
                and ct.tcp_state is not None
                and ct.tcp_state != TCP_CONNTRACK_ESTABLISHED
            ):
                self._remove(key, "fin_rst")  # the kernel saw FIN/RST: its teardown
            else:
                tracked.ct = ct
            return
        if key in self.kernel_only:
            return
        if ct.proto == IPPROTO_TCP and ct.tcp_state is None:
            fresh = self.kernel.get(ct.proto, ct.orig)  # e.g. a mark change: no state
            if fresh is None:
                return
            ct = fresh
        self._consider(ct)

    def _consider(self, ct: CtFlow) -> None:
        why = why_not_offloadable(
            ct, self.timeouts, float("inf"), gwlb_linked=self.gwlb is not None
        ) or not_worth(ct)
        if why is None:
            self._pending.append((ct, self._started_ns))
            if self._parked and ct.key in self._parked:
                self._parked.discard(ct.key)
                self.unparked += 1
        elif why == "gwlb":
            self.stats.gwlb_kernel_path += 1

    def _flush_installs(self, now_ns: int) -> None:
        """Install every pending flow's pair with one batch map update."""
        if not self._pending:
            return
        keys: list[bytes] = []
        values: list[bytes] = []
        staged: list[tuple[CtFlow, int, tuple[bytes, bytes]]] = []
        used = 2 * len(self.tracked)
        hops: dict[IPv4Address, tuple[int, bytes] | None] = {}  # few serve many flows
        for ct, seen_ns in self._pending:
            if ct.key in self.tracked:
                continue
            if used + 2 > self.max_entries:
                self._refuse(ct.key, "table_full")
                continue
            gwlb = hairpin = False
            if ct.status & IPS_DST_NAT:
                sides = self._dnat_sides(ct, hops)
                if isinstance(sides, str):
                    self._refuse_waiting(ct, sides)
                    continue
                inside, outside, to_internet, to_workload = sides
                hairpin = self._hairpin(inside, outside)
            else:
                gwlb = bool(ct.mark & CT_MARK_GWLB)
                client_side = self.gwlb if gwlb else self.inside
                if client_side is None:
                    continue
                inside, outside = client_side, self.outside
                hop_out, hop_back = self._hop(hops, ct.reply.saddr), self._hop(hops, ct.orig.saddr)
                if not hop_out or not hop_back:
                    self._refuse_waiting(ct, "no_neighbour")
                    continue
                if not gwlb and (hop_out[0], hop_back[0]) != (outside.ifindex, inside.ifindex):
                    # a client not behind the inside interface (the forward probe's
                    # namespace, a local container): its packets never meet XDP
                    self._refuse(ct.key, "not_forwarded")
                    continue
                to_internet, to_workload = hop_out[1], hop_back[1]
            out_key, back_key, out_value, back_value = plan_packed(
                ct, inside, outside, to_internet, to_workload, gwlb=gwlb, hairpin=hairpin
            )
            keys += (back_key, out_key)  # return direction first
            values += (back_value, out_value)
            staged.append((ct, seen_ns, (out_key, back_key)))
            used += 2
        self._pending = []
        if not keys:
            return
        self.table.add_packed_flows(b"".join(keys), b"".join(values))
        done_ns = time.monotonic_ns()
        refused = self.refused
        for ct, seen_ns, pair in staged:
            self._track(ct, pair, now_ns)
            if refused:
                refused.pop(ct.key, None)
            self.install_delay_ns.append(done_ns - seen_ns)
            self.install_delay.observe((done_ns - seen_ns) / 1e9)
        self.stats.offloaded += len(staged)
        del self.install_delay_ns[:-1024]

    def _hop(
        self, hops: dict[IPv4Address, tuple[int, bytes] | None], dst: IPv4Address
    ) -> tuple[int, bytes] | None:
        """(output ifindex, next-hop MAC) toward ``dst``; None while unresolved."""
        if dst not in hops:
            hop = self.kernel.next_hop(dst)
            hops[dst] = (hop[0], mac_bytes(hop[1])) if hop else None
        return hops[dst]

    def _refuse_waiting(self, ct: CtFlow, reason: str) -> None:
        """Refuse ``ct`` for ``reason``; one refused for a missing neighbour (a new
        leader's committed flows, before its first ARP) is tried again later."""
        self._refuse(ct.key, reason)
        if reason == "no_neighbour" and len(self._awaiting_hop) < REFUSED_MEMORY:
            self._awaiting_hop[ct.key] = ct

    def _dnat_sides(
        self, ct: CtFlow, hops: dict[IPv4Address, tuple[int, bytes] | None]
    ) -> tuple[Interface, Interface, bytes, bytes] | str:
        return nat_sides(ct, self.inside, self.outside, lambda dst: self._hop(hops, dst))

    def _hairpin(self, client: Interface, server: Interface) -> bool:
        """Both ends on the inside of a two-arm gateway: the hairpin legs, whose deny
        verdict is taken on the translated destination (``FLOW_F_DENY_TRANSLATED``).
        One-arm, the forward chain admits destination-NATed flows before any deny rule."""
        inside = self.inside.ifindex
        return client.ifindex == server.ifindex == inside != self.outside.ifindex

    def _sides(self, ct: CtFlow) -> tuple[Interface, Interface] | None:
        """The client's and the server's sides of ``ct`` (resync adoption); None when
        they cannot be placed now."""
        if ct.status & IPS_DST_NAT:
            sides = self._dnat_sides(ct, {})
            return None if isinstance(sides, str) else (sides[0], sides[1])
        inside = self.gwlb if ct.mark & CT_MARK_GWLB else self.inside
        return None if inside is None else (inside, self.outside)

    def _track(self, ct: CtFlow, keys: tuple[bytes, bytes], now_ns: int) -> None:
        gwlb = bool(ct.mark & CT_MARK_GWLB)
        expires = now_ns + ct.timeout * 1_000_000_000
        tracked = Tracked(keys, ct, now_ns, gwlb, expires_ns=expires)
        self.tracked[ct.key] = tracked
        self.gwlb_tracked += gwlb
        if self.shares is not None:
            self.shares.offloaded(ct.key)
        self._schedule(ct.key, tracked, self._first_look(tracked, now_ns))

    # ---- keepalive wheel ------------------------------------------------------------

    def _margin_ns(self, ct: CtFlow) -> int:
        """How long before expiry a flow is looked at: an eighth of its timeout, 2 s
        at least."""
        return max(2_000_000_000, self.timeouts.for_flow(ct) * 125_000_000)

    def _first_look(self, tracked: Tracked, now_ns: int) -> int:
        at = min(tracked.expires_ns - self._margin_ns(tracked.ct), now_ns + self.idle_ns)
        if self.bulk_tcp == "kernel" and tracked.ct.proto == IPPROTO_TCP:
            at = min(at, now_ns + 1_000_000_000)
        return max(at, now_ns + 1_000_000_000)

    def _schedule(self, key: CtKey, tracked: Tracked, at_ns: int) -> None:
        second = at_ns // 1_000_000_000
        tracked.due = second
        self.wheel[second].append(key)

    def _keepalive(self, now_ns: int) -> None:
        """Look at the flows due now (bounded per step); refresh the active ones."""
        now_s = now_ns // 1_000_000_000
        if not self._wheel_at:
            self._wheel_at = now_s
        refresh: list[tuple[CtFlow, int]] = []
        park: list[CtFlow] = []
        budget = MAX_CHECKS_PER_STEP
        while self._wheel_at <= now_s and budget > 0:
            bucket = self.wheel.get(self._wheel_at)
            if not bucket:
                self.wheel.pop(self._wheel_at, None)
                self._wheel_at += 1
                continue
            while bucket and budget > 0:
                key = bucket.pop()
                tracked = self.tracked.get(key)
                if tracked is None or tracked.due != self._wheel_at:
                    continue  # gone, or rescheduled
                budget -= 1
                self._look(key, tracked, now_ns, refresh, park)
        if refresh:
            self.refreshes += self.kernel.refresh(refresh)
            self.stats.keepalives = self.refreshes
        if park:
            self.kernel.park(park)

    def _look(
        self,
        key: CtKey,
        tracked: Tracked,
        now_ns: int,
        refresh: list[tuple[CtFlow, int]],
        park: list[CtFlow],
    ) -> None:
        activity = self.table.flow_activity
        fwd, back = activity(tracked.keys[0]), activity(tracked.keys[1])
        if fwd is None or back is None:
            self._remove(key, "missing_from_table")
            return
        if (fwd[1] | back[1]) & FLOW_F_CLOSING:
            self._remove(key, "fin_rst")
            return
        last_seen = max(fwd[0], back[0])
        if last_seen and now_ns - last_seen > self.idle_ns:
            self._remove(key, "idle")
            self.idle_parked += 1
            park.append(tracked.ct)
            if len(self._parked) < REFUSED_MEMORY:
                self._parked.add(key)
            return
        if self.bulk_tcp == "kernel" and tracked.ct.proto == IPPROTO_TCP:
            entries = [e for e in map(self.table.packed_flow, tracked.keys) if e]
            if tracked.bulk is None:
                tracked.bulk = Offloaded(tracked.flow_keys(), tracked.refreshed_ns)
            if tracked.bulk.is_bulk(entries, now_ns):
                self._remove(key, "bulk_tcp")
                self.kernel_only.add(key)
                return
        timeout_s = self.timeouts.for_flow(tracked.ct)
        if last_seen > tracked.refreshed_ns:
            # what the kernel would have left after the last packet it did not see
            left = max(1, timeout_s - (now_ns - last_seen) // 1_000_000_000)
            refresh.append((tracked.ct, left))
            tracked.refreshed_ns = last_seen
            tracked.expires_ns = now_ns + left * 1_000_000_000
            self._schedule(key, tracked, self._first_look(tracked, now_ns))
            return
        # quiet since the last refresh: one more look just before expiry, then let
        # the kernel expire it (its destroy event removes the pair)
        last_chance = tracked.expires_ns - int(LAST_CHANCE_S * 1e9)
        if now_ns < last_chance - 500_000_000:
            self._schedule(key, tracked, last_chance)
        else:
            self._schedule(key, tracked, now_ns + self.idle_ns)

    def _note_destroyed(self, tracked: Tracked, now_ns: int) -> None:
        """A destroyed entry whose flow the fast path carried after the last refresh
        (the keepalive came too late: counted, it should stay 0)."""
        seen = [self.table.flow_activity(k) for k in tracked.keys]
        last = max((a[0] for a in seen if a is not None), default=0)
        if last > tracked.refreshed_ns and now_ns - last < 2_000_000_000:
            self.destroyed_while_active += 1

    # ---- resync ---------------------------------------------------------------------

    def _resync(self, reason: str, now_ns: int) -> None:
        """Rebuild from a dump: adopt our pairs already in the table, drop the ones
        conntrack no longer has, offload what is due, recount NAT port use."""
        self.resyncs[reason] += 1
        cts = {ct.key: ct for ct in self.kernel.dump()}
        table = {pack_key(k) for k, _ in self.table.flows()}
        known = {k for t in self.tracked.values() for k in t.keys}
        for key in [k for k in self.tracked if k not in cts]:
            self._remove(key, "conntrack_destroyed")
        for key, ct in cts.items():
            if key in self.tracked:
                self.tracked[key].ct = ct
                continue
            sides = self._sides(ct)
            if sides is None:
                continue
            out_key, back_key = (pack_key(k) for k in flow_keys(ct, *sides))
            if out_key in table and back_key in table and out_key not in known:
                self._track(ct, (out_key, back_key), now_ns)
                self.stats.adopted += 1
        known = {k for t in self.tracked.values() for k in t.keys}
        for orphan in table - known:
            self.table.delete_packed_flow(orphan)
            self.stats.removed["orphan"] += 1
        self.kernel_only &= cts.keys()
        self._parked &= cts.keys()
        for gone in self.refused.keys() - cts.keys():
            del self.refused[gone]
        self.nat_ports = Counter(_nat_key(ct) for ct in cts.values() if ct.status & IPS_SRC_NAT)
        self.stats.gwlb_kernel_path = 0
        for key, ct in cts.items():
            if key not in self.tracked and key not in self.kernel_only:
                # recently seen only: an idle flow waits for traffic on the kernel path
                linked = self.gwlb is not None
                why = why_not_offloadable(ct, self.timeouts, 5.0, gwlb_linked=linked)
                why = why or not_worth(ct)
                if why is None:
                    self._pending.append((ct, self._started_ns))
                elif why == "gwlb":
                    self.stats.gwlb_kernel_path += 1
        self._flush_installs(now_ns)

    def _gwlb_changed(self) -> None:
        """The GWLB interface was linked, unlinked or replaced: its flows leave; a new
        link takes the GWLB flows conntrack holds (a resync)."""
        self._gwlb_seen = self.gwlb
        for key in [k for k, t in self.tracked.items() if t.gwlb]:
            self._remove(key, "gwlb_unlinked")
        if self.gwlb is not None:
            self._needs_resync = self._needs_resync or "gwlb_linked"

    # ---- bookkeeping ----------------------------------------------------------------

    def _count_nat(self, ct: CtFlow, delta: int) -> None:
        if not ct.status & IPS_SRC_NAT:
            return
        key = _nat_key(ct)
        count = self.nat_ports[key] + delta
        if count > 0:
            self.nat_ports[key] = count
        else:
            self.nat_ports.pop(key, None)

    def _refuse(self, key: CtKey, reason: str) -> None:
        """Count a refused flow once per reason (see :class:`xdp.offload.Offloader`)."""
        if self.refused.get(key) == reason:
            return
        if key in self.refused or len(self.refused) < REFUSED_MEMORY:
            self.refused[key] = reason
        if reason == "table_full":
            self.stats.table_full += 1
        else:
            self.stats.skipped[reason] += 1

    def _remove(self, key: CtKey, reason: str) -> None:
        tracked = self.tracked.pop(key)
        self.gwlb_tracked -= tracked.gwlb
        if self.shares is not None:
            self._settle(key, tracked)
        for k in tracked.keys:
            self.table.delete_packed_flow(k)
        self.stats.removed[reason] += 1

    def _settle(self, key: CtKey, tracked: Tracked) -> None:
        """Hand the pair's fast-path counters to the flow log before they are deleted
        (two map reads, only while a flow log runs)."""
        shares = self.shares
        assert shares is not None
        if not shares.enabled:
            shares.forget(key)
            return
        fwd, back = (self.table.packed_flow(k) for k in tracked.keys)
        shares.removed(
            key,
            Share.from_frames(
                (fwd.packets, fwd.bytes) if fwd else (0, 0),
                (back.packets, back.bytes) if back else (0, 0),
            ),
        )

    def snapshot(self) -> dict[str, Any]:
        """The counters for ``spectra status``. Never waits long: while the worker is
        busy (a resync of a large table) the previous snapshot is returned; the NAT
        port ranking (a scan of every destination) is redone at most every
        ``NAT_TOP_EVERY_NS``."""
        if not self.lock.acquire(timeout=0.02):
            return dict(self._last_snapshot, busy=True)
        try:
            now = time.monotonic_ns()
            if now - self._nat_top_at >= NAT_TOP_EVERY_NS:
                self._nat_top_at = now
                top = self.nat_ports.most_common(NAT_PORTS_TOP)
                self.stats.nat_ports_busiest = top[0][1] if top else 0
                self.stats.nat_ports_top = [
                    {"proto": p, "nat_address": str(a), "destination": str(d), "port": port,
                     "ports": n}
                    for (p, a, d, port), n in top
                ]  # fmt: skip
            self.stats.gwlb_offloaded = self.gwlb_tracked
            out = self.stats.as_dict()
            delays = sorted(self.install_delay_ns)
            out.update(
                events=self.events,
                resyncs=dict(self.resyncs),
                resyncs_total=sum(self.resyncs.values()),
                refresh_failed=getattr(self.kernel, "refresh_failed", 0),
                destroyed_while_active=self.destroyed_while_active,
                idle_parked=self.idle_parked,
                unparked=self.unparked,
                install_delay_p50_ms=_pct_ms(delays, 0.5),
                install_delay_p99_ms=_pct_ms(delays, 0.99),
                install_delay_seconds=self.install_delay.as_dict(),
            )
        finally:
            self.lock.release()
        self._last_snapshot = out
        return out


def not_worth(ct: CtFlow) -> str | None:
    """``"not_assured"`` for a UDP flow the kernel has not marked assured (no packet
    more than 2 s after the first reply: not a stream), else None."""
    if ct.proto == IPPROTO_UDP and not ct.status & IPS_ASSURED:
        return "not_assured"
    return None


def _nat_key(ct: CtFlow) -> NatKey:
    return (ct.proto, ct.reply.daddr, ct.orig.daddr, ct.orig.dport)


def _pct_ms(ordered: list[int], q: float) -> float:
    if not ordered:
        return 0.0
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6, 3)


class OffloadWorker:
    """Runs an :class:`EventOffloader` in a daemon thread until :meth:`stop`."""

    def __init__(self, offloader: EventOffloader, name: str = "spectra-offload") -> None:
        self.offloader = offloader
        self._stop = threading.Event()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.offloader.step(wait=STEP_SECONDS)
                self.error = None
            except OSError as exc:  # netlink or map trouble: report, resync, go on
                self.error = str(exc)
                log.error("offloader step failed (resync next): %s", exc)
                self.offloader._needs_resync = "error"
                self._stop.wait(1.0)

    def stop(self, timeout: float = 1.5) -> None:
        self._stop.set()
        self._thread.join(timeout)
