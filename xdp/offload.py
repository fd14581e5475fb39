"""Conntrack-aware NAT offload: move flows the kernel has decided into the XDP table.

The decisions (:func:`why_not_offloadable`, :func:`nat_sides`, :func:`plan`) serve both
offloaders: :mod:`xdp.offload_events` (production: source- and destination-NATed flows)
and the dump offloader here (:class:`Offloader`, kept as the performance baseline:
source-NATed flows only, a destination-NATed one is skipped as ``dnat``).

The decisions only: what the kernel holds comes through the :class:`Kernel` protocol
(:class:`xdp.ctnetlink.PyrouteKernel` in production, fakes in tests), so nothing here
talks to the kernel.  Kernel conntrack stays the source of truth. Each
:meth:`Offloader.sync` reads the conntrack table and

* installs both directions of every established, source-NATed flow that policy lets
  bypass inspection, with exactly the mapping the kernel chose (the reply tuple);
* keeps the kernel entry alive while the fast path carries the flow (the program's
  ``last_seen`` moves, the agent resets the conntrack timeout);
* removes the pair when the kernel entry is gone, when the program saw FIN/RST
  (``FLOW_F_CLOSING``: the kernel now owns the teardown), or after ``idle_seconds``
  without traffic;
* with ``bulk_tcp="kernel"``, hands bulk TCP back to the kernel path: a direction that
  sustains full-size segments, which the kernel's GRO forwards many segments per
  routing and NAT decision.  The default, ``"fast_path"``, keeps them in XDP: where
  XDP_PASS costs a copy per packet (veth, generic XDP) the kernel path loses that
  advantage.  ``"kernel"`` is for drivers whose XDP_PASS costs nothing extra; compare
  both on the target with ``python -m perf dataplane`` (rows ``tcp_throughput``).  A
  handed-back flow is not offloaded again while its conntrack entry lives;
* after a restart, adopts pairs already in the pinned table that still match kernel
  conntrack and deletes the rest;
* two-arm GWLB flows (conntrack mark ``CT_MARK_GWLB``) take the fast path only while a
  GWLB interface is linked (:attr:`Offloader.gwlb`, from ``Dataplane.gwlb_ifindex``):
  the forward entry is keyed on the GWLB interface (``xdp_gwlb`` hands the decapsulated
  packet to ``xdp_gateway``), the return entry is flagged ``FLOW_F_GWLB`` and sent back
  to the GWLB interface re-encapsulated.  Unlinked, they stay on the kernel path.

A full table leaves new flows on the kernel path (counted as ``table_full``): the agent
never lets the LRU evict an existing flow.  ``table_full`` and ``no_neighbour`` count
flows, not syncs: a refused flow is retried every sync but counted once per reason
(its key is remembered, at most ``REFUSED_MEMORY`` of them, and forgotten when its
conntrack entry goes or it is offloaded). Offloaded TCP flows bypass conntrack's window
tracking, so the gateway runs with ``nf_conntrack_tcp_be_liberal=1`` (what the kernel's
own flowtable offload does per flow); otherwise the FIN handed back later would be
INVALID and dropped.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from nfq.marks import CT_MARK_BYPASS, CT_MARK_GWLB, CT_MARK_INSPECT
from xdp.records import (
    FLOW_F_DENY_TRANSLATED,
    FLOW_F_GWLB,
    IPPROTO_ICMP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    FlowEntry,
    FlowKey,
)

log = logging.getLogger("spectra.xdp")

IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5
IPS_DYING = 1 << 9
TCP_CONNTRACK_ESTABLISHED = 3

SYSCTL = Path("/proc/sys/net/netfilter")

# Bulk TCP: one direction carrying at least BULK_MIN_PPS packets/s averaging at least
# BULK_MIN_AVG_BYTES per frame over a window of BULK_WINDOW_NS.  2,000 full frames/s is
# ~24 Mbit/s: below it the per-packet cost does not matter; 1,000 B keeps interactive
# and request/response flows (small segments) on the fast path.
# Refused flows remembered so each is counted once; past this many, a refusal is
# counted without being remembered (it may then be counted again).
REFUSED_MEMORY = 65536
NAT_PORTS_TOP = 5
BULK_WINDOW_NS = 1_000_000_000
BULK_MIN_PPS = 2_000
BULK_MIN_AVG_BYTES = 1_000
BulkTcp = Literal["kernel", "fast_path"]


@dataclass(frozen=True, slots=True)
class CtTuple:
    """One conntrack tuple; for ICMP echo ``sport`` is the identifier and ``dport`` 0."""

    saddr: IPv4Address
    daddr: IPv4Address
    sport: int
    dport: int


@dataclass(frozen=True, slots=True)
class CtFlow:
    """The parts of a kernel conntrack entry the offload decision needs."""

    proto: int
    orig: CtTuple
    reply: CtTuple
    status: int
    tcp_state: int | None
    mark: int
    timeout: int

    @property
    def key(self) -> tuple[int, CtTuple]:
        return (self.proto, self.orig)


@dataclass(frozen=True, slots=True)
class Interface:
    """A gateway interface as the fast path sees it: the key's ingress ifindex, the
    egress ifindex and the source MAC of what leaves through it."""

    ifindex: int
    mac: str


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Kernel conntrack timeouts (seconds), read from this namespace's sysctls."""

    tcp_established: int = 432000
    # What an established TCP entry gets instead while data is unacknowledged (bulk
    # senders, most of the time): the entry is just as recently seen.
    tcp_unacknowledged: int = 300
    udp: int = 30
    udp_stream: int = 120
    icmp: int = 30

    @classmethod
    def from_sysctl(cls) -> Timeouts:
        def read(name: str, default: int) -> int:
            try:
                return int((SYSCTL / name).read_text())
            except (OSError, ValueError):
                return default

        d = cls()
        return cls(
            tcp_established=read("nf_conntrack_tcp_timeout_established", d.tcp_established),
            tcp_unacknowledged=read(
                "nf_conntrack_tcp_timeout_unacknowledged", d.tcp_unacknowledged
            ),
            udp=read("nf_conntrack_udp_timeout", d.udp),
            udp_stream=read("nf_conntrack_udp_timeout_stream", d.udp_stream),
            icmp=read("nf_conntrack_icmp_timeout", d.icmp),
        )

    def for_flow(self, ct: CtFlow) -> int:
        """The timeout the kernel sets when it sees a packet of ``ct`` in its state."""
        if ct.proto == IPPROTO_TCP:
            return self.tcp_established
        if ct.proto == IPPROTO_UDP:
            return self.udp_stream if ct.status & IPS_ASSURED else self.udp
        return self.icmp

    def seen_within(self, ct: CtFlow, seconds: float) -> bool:
        """Whether the kernel saw a packet of ``ct`` in the last ``seconds``, from the
        timeout it set then (any it may have set) and what remains of it."""
        if self.for_flow(ct) - ct.timeout <= seconds:
            return True
        return ct.proto == IPPROTO_TCP and 0 <= self.tcp_unacknowledged - ct.timeout <= seconds


def why_not_offloadable(
    ct: CtFlow,
    timeouts: Timeouts,
    recent_seconds: float,
    *,
    gwlb_linked: bool = False,
    dnat: bool = True,
) -> str | None:
    """None when ``ct`` may go to the fast path now, else the reason it may not;
    ``gwlb_linked``: GWLB flows can be re-encapsulated by the fast path; ``dnat``:
    the caller can place destination-NATed flows (:func:`nat_sides`).  A flow the
    kernel admitted is decided: a port forward's ``allow_from`` and the L4 load
    balancer's choice of backend apply to new connections only."""
    if ct.status & IPS_DYING:
        return "dying"
    if not ct.status & (IPS_SRC_NAT | IPS_DST_NAT):
        return "not_nat"
    if ct.status & IPS_DST_NAT and not dnat:
        return "dnat"
    if not ct.status & IPS_SEEN_REPLY:
        return "unreplied"
    if ct.proto == IPPROTO_TCP and (
        ct.tcp_state != TCP_CONNTRACK_ESTABLISHED or not ct.status & IPS_ASSURED
    ):
        return "not_established"
    if ct.mark & CT_MARK_GWLB and (not gwlb_linked or ct.status & IPS_DST_NAT):
        return "gwlb"
    if ct.mark & CT_MARK_INSPECT and not ct.mark & CT_MARK_BYPASS:
        return "under_inspection"
    # Idle flows stay on the kernel path until traffic returns to it.
    if not timeouts.seen_within(ct, recent_seconds):
        return "idle"
    return None


def flow_keys(ct: CtFlow, inside: Interface, outside: Interface) -> tuple[FlowKey, FlowKey]:
    """The fast-path keys of both directions: as sent by the client (arriving on
    ``inside``, the client's side: the inside or the GWLB interface for a source-NATed
    flow), as returned by the server (arriving on ``outside``, the server's side)."""
    o, r, p = ct.orig, ct.reply, ct.proto
    return (
        FlowKey(inside.ifindex, o.saddr, o.daddr, o.sport, o.dport, p),
        FlowKey(outside.ifindex, r.saddr, r.daddr, r.sport, r.dport, p),
    )


Hop = TypeVar("Hop")


def nat_sides(
    ct: CtFlow,
    inside: Interface,
    outside: Interface,
    hop: Callable[[IPv4Address], tuple[int, Hop] | None],
) -> tuple[Interface, Interface, Hop, Hop] | str:
    """Where a destination-NATed flow's two ends are, from the kernel's routes:
    (client side, server side, next hop toward the server, toward the client), or the
    reason it cannot be placed.  ``hop(address)`` is the route's output interface and
    next hop toward ``address``.

    The client is ``orig.saddr``, the server the kernel chose is ``reply.saddr``.  A
    port forward or an outside load-balancer listener: client outside, server inside.
    Hairpin (an inside client to an outside address; an inside listener): both inside,
    and the kernel also source-NATed the flow to the gateway's inside address, so the
    server answers the gateway and both legs arrive on the inside interface.  Either
    end on another interface (the gateway itself: ``lo``) stays in the kernel."""
    to_server, to_client = hop(ct.reply.saddr), hop(ct.orig.saddr)
    if to_server is None or to_client is None:
        return "no_neighbour"
    sides = {inside.ifindex: inside, outside.ifindex: outside}
    client, server = sides.get(to_client[0]), sides.get(to_server[0])
    if client is None or server is None:
        return "not_forwarded"
    return client, server, to_server[1], to_client[1]


def plan(
    ct: CtFlow,
    inside: Interface,
    outside: Interface,
    mac_toward_internet: str,
    mac_toward_workload: str,
    *,
    gwlb: bool = False,
    hairpin: bool = False,
) -> tuple[tuple[FlowKey, FlowEntry], tuple[FlowKey, FlowEntry]]:
    """Both directions of a NATed flow, translated exactly as the kernel does: each
    direction's packet leaves with the opposite direction's tuple reversed (source,
    destination or both translated, whatever the kernel chose). ``inside`` is the
    client's side, ``outside`` the server's (:func:`nat_sides` for a destination-NATed
    flow), the MACs the next hops toward the server and toward the client; ``gwlb``:
    ``inside`` is the GWLB interface and the return entry re-encapsulates (the kernel's
    next hop toward the workload is the GWLB: its MAC goes outside); ``hairpin``: both
    ends are inside, both entries carry ``FLOW_F_DENY_TRANSLATED``."""
    o, r, p = ct.orig, ct.reply, ct.proto
    out_key, back_key = flow_keys(ct, inside, outside)
    out_entry = FlowEntry(
        new_saddr=r.daddr,
        new_daddr=r.saddr,
        new_sport=r.dport if p != IPPROTO_ICMP else r.sport,
        new_dport=r.sport if p != IPPROTO_ICMP else 0,
        egress_ifindex=outside.ifindex,
        src_mac=outside.mac,
        dst_mac=mac_toward_internet,
        flags=FLOW_F_DENY_TRANSLATED if hairpin else 0,
    )
    back_entry = FlowEntry(
        new_saddr=o.daddr,
        new_daddr=o.saddr,
        new_sport=o.dport if p != IPPROTO_ICMP else o.sport,
        new_dport=o.sport if p != IPPROTO_ICMP else 0,
        egress_ifindex=inside.ifindex,
        src_mac=inside.mac,
        dst_mac=mac_toward_workload,
        flags=(FLOW_F_GWLB if gwlb else 0) | (FLOW_F_DENY_TRANSLATED if hairpin else 0),
    )
    return (out_key, out_entry), (back_key, back_entry)


class FlowTable(Protocol):
    """What the offloader needs of :class:`xdp.Dataplane`."""

    def add_flow(self, key: FlowKey, entry: FlowEntry) -> None: ...
    def delete_flow(self, key: FlowKey) -> bool: ...
    def flows(self) -> list[tuple[FlowKey, FlowEntry]]: ...


class Kernel(Protocol):
    """What the offloader needs of the kernel: conntrack and next-hop neighbours.

    :class:`xdp.ctnetlink.PyrouteKernel` dumps conntrack over ctnetlink each sync; an
    adapter fed by conntrack events fits the same contract."""

    def conntrack(self) -> Iterable[CtFlow]: ...
    def refresh(self, ct: CtFlow, timeout: int) -> None: ...
    def next_hop_mac(self, dst: IPv4Address) -> str | None: ...


@dataclass(slots=True)
class Offloaded:
    keys: tuple[FlowKey, FlowKey]
    refreshed_ns: int
    # Start of the current bulk-detection window and each direction's counters then.
    window_ns: int = 0
    window_counts: tuple[tuple[int, int], ...] = ()
    gwlb: bool = False  # a two-arm GWLB flow (forward key on the GWLB interface)

    def is_bulk(self, entries: list[FlowEntry], now_ns: int) -> bool:
        """Close the window once it is BULK_WINDOW_NS old; True when one direction
        carried bulk traffic during it."""
        counts = tuple((e.packets, e.bytes) for e in entries)
        if not self.window_counts:
            self.window_ns, self.window_counts = now_ns, counts
            return False
        elapsed = now_ns - self.window_ns
        if elapsed < BULK_WINDOW_NS:
            return False
        bulk = False
        for (p0, b0), (p1, b1) in zip(self.window_counts, counts, strict=True):
            packets, octets = p1 - p0, b1 - b0
            if packets <= 0:
                continue
            pps = packets * 1e9 / elapsed
            bulk = bulk or (pps >= BULK_MIN_PPS and octets / packets >= BULK_MIN_AVG_BYTES)
        self.window_ns, self.window_counts = now_ns, counts
        return bulk


@dataclass(slots=True)
class OffloadStats:
    """Counters reported in ``spectra status``."""

    offloaded: int = 0
    active: int = 0
    removed: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    table_full: int = 0
    keepalives: int = 0
    adopted: int = 0
    gwlb_kernel_path: int = 0  # GWLB flows in conntrack now, left on the kernel path
    gwlb_offloaded: int = 0  # GWLB flows on the fast path now
    # NATed TCP connections the kernel ended while still ESTABLISHED (no FIN/RST: they
    # went idle past the timeout): NAT Gateway's IdleTimeoutCount (event offloader)
    idle_timeouts: int = 0
    # Translated ports in use per (protocol, outside address, destination, port): the
    # busiest count (a port range holds that many) and the top few, from the last sync.
    nat_ports_busiest: int = 0
    nat_ports_top: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "offloaded_total": self.offloaded,
            "active": self.active,
            "removed": dict(self.removed),
            "table_full": self.table_full,
            "keepalives": self.keepalives,
            "adopted": self.adopted,
            "no_neighbour": self.skipped["no_neighbour"],
            "not_forwarded": self.skipped["not_forwarded"],
            "bulk_tcp_in_kernel": self.removed["bulk_tcp"],
            "gwlb_kernel_path": self.gwlb_kernel_path,
            "gwlb_offloaded": self.gwlb_offloaded,
            "idle_timeouts": self.idle_timeouts,
            "nat_ports_busiest": self.nat_ports_busiest,
            "nat_ports_top": list(self.nat_ports_top),
        }


class Offloader:
    """Keeps the XDP flow table a faithful, bounded subset of kernel conntrack."""

    def __init__(
        self,
        table: FlowTable,
        kernel: Kernel,
        inside: Interface,
        outside: Interface,
        capacity: int,
        *,
        idle_seconds: float = 300.0,
        recent_seconds: float = 5.0,
        timeouts: Timeouts | None = None,
        bulk_tcp: BulkTcp = "fast_path",
    ) -> None:
        self.table, self.kernel = table, kernel
        self.inside, self.outside = inside, outside
        # Two entries per flow; keep headroom so the LRU never has to evict.
        self.max_entries = max(0, capacity - max(2, capacity // 64))
        self.idle_ns = int(idle_seconds * 1e9)
        self.recent_seconds = recent_seconds
        self.timeouts = timeouts or Timeouts.from_sysctl()
        self.bulk_tcp = bulk_tcp
        self.offloaded: dict[tuple[int, CtTuple], Offloaded] = {}
        # Flows handed back as bulk TCP: they stay on the kernel path until conntrack
        # forgets them (kept in memory: after a restart a bulk flow is handed back
        # again within one window).
        self.kernel_only: set[tuple[int, CtTuple]] = set()
        # Flows refused a fast-path entry, and why: counted once per flow and reason.
        self.refused: dict[tuple[int, CtTuple], str] = {}
        # The linked two-arm GWLB interface (FastPath sets it each sync), else None.
        self.gwlb: Interface | None = None
        self.stats = OffloadStats()

    def sync(self, now_ns: int | None = None) -> None:
        """One pass: reconcile the table with conntrack (cheap enough every 200 ms)."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        cts = {ct.key: ct for ct in self.kernel.conntrack()}
        table = dict(self.table.flows())
        self._adopt(cts, table, now_ns)
        for ct_key, off in list(self.offloaded.items()):
            reason = self._retire_reason(cts.get(ct_key), off, table, now_ns)
            if reason:
                self._remove(ct_key, reason)
                if reason == "bulk_tcp":
                    self.kernel_only.add(ct_key)
        self._delete_orphans(table)
        self.kernel_only &= cts.keys()
        for gone in self.refused.keys() - cts.keys():
            del self.refused[gone]
        used = 2 * len(self.offloaded)
        gwlb_flows = 0
        for ct_key, ct in cts.items():
            if ct_key in self.offloaded or ct_key in self.kernel_only:
                continue
            why = why_not_offloadable(
                ct,
                self.timeouts,
                self.recent_seconds,
                gwlb_linked=self.gwlb is not None,
                dnat=False,
            )
            if why:
                if why == "gwlb":
                    gwlb_flows += 1
                continue
            if used + 2 > self.max_entries:
                self._refuse(ct_key, "table_full")
                continue
            if self._install(ct, now_ns):
                self.refused.pop(ct_key, None)
                used += 2
        self.stats.active = len(self.offloaded)
        self._count_nat_ports(cts.values())
        self.stats.gwlb_kernel_path = gwlb_flows
        self.stats.gwlb_offloaded = sum(1 for off in self.offloaded.values() if off.gwlb)

    def _inside_for(self, ct: CtFlow) -> Interface | None:
        """Where ``ct``'s workload side arrives: the GWLB interface for a GWLB flow
        (None while none is linked), else the inside interface."""
        return self.gwlb if ct.mark & CT_MARK_GWLB else self.inside

    def _adopt(
        self, cts: dict[tuple[int, CtTuple], CtFlow], table: dict[FlowKey, FlowEntry], now_ns: int
    ) -> None:
        """Pairs already in the (pinned) table that still match conntrack are ours."""
        if not table:
            return
        known = {k for off in self.offloaded.values() for k in off.keys}
        for ct_key, ct in cts.items():
            inside = self._inside_for(ct)
            if ct_key in self.offloaded or inside is None:
                continue
            out_key, back_key = flow_keys(ct, inside, self.outside)
            if out_key in table and back_key in table and out_key not in known:
                gwlb = bool(ct.mark & CT_MARK_GWLB)
                self.offloaded[ct_key] = Offloaded((out_key, back_key), now_ns, gwlb=gwlb)
                self.stats.adopted += 1

    def _retire_reason(
        self, ct: CtFlow | None, off: Offloaded, table: dict[FlowKey, FlowEntry], now_ns: int
    ) -> str | None:
        if ct is None or ct.status & IPS_DYING:
            return "conntrack_destroyed"
        if off.gwlb and (self.gwlb is None or off.keys[0].ifindex != self.gwlb.ifindex):
            return "gwlb_unlinked"
        entries = [table.get(k) for k in off.keys]
        if any(e is None for e in entries):
            return "missing_from_table"
        present = [e for e in entries if e is not None]
        if any(e.closing for e in present):
            return "fin_rst"
        last_seen = max(e.last_seen_ns for e in present)
        if last_seen and now_ns - last_seen > self.idle_ns:
            return "idle"
        if self.bulk_tcp == "kernel" and ct.proto == IPPROTO_TCP and off.is_bulk(present, now_ns):
            return "bulk_tcp"
        if last_seen > off.refreshed_ns:
            self.kernel.refresh(ct, self.timeouts.for_flow(ct))
            off.refreshed_ns = last_seen
            self.stats.keepalives += 1
        return None

    def _install(self, ct: CtFlow, now_ns: int) -> bool:
        inside = self._inside_for(ct)
        if inside is None:
            return False
        gwlb = bool(ct.mark & CT_MARK_GWLB)
        to_internet = self.kernel.next_hop_mac(ct.orig.daddr)
        to_workload = self.kernel.next_hop_mac(ct.orig.saddr)
        if not to_internet or not to_workload:
            self._refuse(ct.key, "no_neighbour")
            return False
        pair = plan(ct, inside, self.outside, to_internet, to_workload, gwlb=gwlb)
        # Return direction first: the first translated packet out may be answered at once.
        for key, entry in reversed(pair):
            self.table.add_flow(key, entry)
        self.offloaded[ct.key] = Offloaded((pair[0][0], pair[1][0]), now_ns, gwlb=gwlb)
        self.stats.offloaded += 1
        log.debug("offloaded %s", ct)
        return True

    def _count_nat_ports(self, cts: Iterable[CtFlow]) -> None:
        """Per-destination use of translated ports (one conntrack entry each)."""
        use = Counter(
            (ct.proto, ct.reply.daddr, ct.orig.daddr, ct.orig.dport)
            for ct in cts
            if ct.status & IPS_SRC_NAT
        )
        top = use.most_common(NAT_PORTS_TOP)
        self.stats.nat_ports_busiest = top[0][1] if top else 0
        self.stats.nat_ports_top = [
            {"proto": p, "nat_address": str(a), "destination": str(d), "port": port, "ports": n}
            for (p, a, d, port), n in top
        ]

    def _refuse(self, ct_key: tuple[int, CtTuple], reason: str) -> None:
        """Count a refused flow once per reason, however many syncs retry it."""
        if self.refused.get(ct_key) == reason:
            return
        if ct_key in self.refused or len(self.refused) < REFUSED_MEMORY:
            self.refused[ct_key] = reason
        if reason == "table_full":
            self.stats.table_full += 1
        else:
            self.stats.skipped[reason] += 1

    def _remove(self, ct_key: tuple[int, CtTuple], reason: str) -> None:
        off = self.offloaded.pop(ct_key)
        for key in off.keys:
            self.table.delete_flow(key)
        self.stats.removed[reason] += 1

    def _delete_orphans(self, table: dict[FlowKey, FlowEntry]) -> None:
        known = {k for off in self.offloaded.values() for k in off.keys}
        for key in table.keys() - known:
            self.table.delete_flow(key)
            self.stats.removed["orphan"] += 1
