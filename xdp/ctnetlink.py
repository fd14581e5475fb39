"""The offloader's kernel adapter: conntrack over ctnetlink, next hops over rtnetlink
(pyroute2), in the current network namespace.

Everything the offloader learns from or writes to the kernel goes through
:class:`PyrouteKernel`, which implements :class:`xdp.offload.Kernel`; the decisions in
:mod:`xdp.offload` never touch netlink, so this adapter can be replaced (for one fed by
conntrack events) without changing them.  pyroute2 is imported when an adapter is
created, never at import time.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from ipaddress import IPv4Address
from typing import Any

from xdp.offload import CtFlow, CtTuple
from xdp.records import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP

log = logging.getLogger("spectra.xdp")

ICMP_ECHO_REQUEST = 8


class PyrouteKernel:
    """:class:`xdp.offload.Kernel` over ctnetlink and rtnetlink in the current network
    namespace: a full conntrack dump per call to :meth:`conntrack`."""

    def __init__(self) -> None:
        from pyroute2 import IPRoute
        from pyroute2.conntrack import Conntrack

        self._ct = Conntrack()
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ct.close()
        self._ipr.close()

    def conntrack(self) -> Iterable[CtFlow]:
        for e in self._ct.dump_entries():
            flow = _ct_flow(e)
            if flow is not None:
                yield flow

    def refresh(self, ct: CtFlow, timeout: int) -> None:
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        o = ct.orig
        if ct.proto == IPPROTO_ICMP:
            tup = NFCTAttrTuple(
                saddr=str(o.saddr), daddr=str(o.daddr), proto=ct.proto,
                icmp_id=o.sport, icmp_type=ICMP_ECHO_REQUEST, icmp_code=0,
            )  # fmt: skip
        else:
            tup = NFCTAttrTuple(
                saddr=str(o.saddr), daddr=str(o.daddr), proto=ct.proto,
                sport=o.sport, dport=o.dport,
            )  # fmt: skip
        try:
            self._ct.entry("set", tuple_orig=tup, timeout=timeout)
        except OSError as exc:  # the entry died between dump and refresh
            log.debug("conntrack refresh of %s failed: %s", ct, exc)

    def next_hop_mac(self, dst: IPv4Address) -> str | None:
        return next_hop_mac(self._ipr, dst)


def next_hop_mac(ipr: Any, dst: IPv4Address) -> str | None:
    """The MAC of the next hop toward ``dst`` (the route's gateway, else ``dst``), from
    the neighbour table; None while it is unresolved."""
    hop = next_hop(ipr, dst)
    return None if hop is None else hop[1]


def next_hop(ipr: Any, dst: IPv4Address) -> tuple[int, str] | None:
    """The route's output interface toward ``dst`` and the MAC of its next hop (the
    route's gateway, else ``dst``) from the neighbour table; None while unresolved."""
    routes = ipr.route("get", dst=str(dst))
    if not routes:
        return None
    route = routes[0]
    hop = route.get_attr("RTA_GATEWAY") or str(dst)
    oif = route.get_attr("RTA_OIF")
    for neigh in ipr.get_neighbours(dst=hop, ifindex=oif):
        mac = neigh.get_attr("NDA_LLADDR")
        if mac:
            return int(oif), str(mac)
    return None


def _ct_flow(e: Any) -> CtFlow | None:
    """The offloader's view of one pyroute2 conntrack entry; None for what it never
    offloads (not IPv4, not TCP/UDP/ICMP echo)."""
    proto = e.tuple_orig.proto
    if proto not in (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP) or e.tuple_orig.saddr is None:
        return None
    if proto == IPPROTO_ICMP and e.tuple_orig.icmp_type != ICMP_ECHO_REQUEST:
        return None

    def tup(t: Any) -> CtTuple:
        if proto == IPPROTO_ICMP:
            return CtTuple(IPv4Address(t.saddr), IPv4Address(t.daddr), int(t.icmp_id), 0)
        return CtTuple(IPv4Address(t.saddr), IPv4Address(t.daddr), int(t.sport), int(t.dport))

    if e.tuple_orig.family != socket.AF_INET:
        return None
    state = e.protoinfo.state if proto == IPPROTO_TCP and e.protoinfo is not None else None
    return CtFlow(
        proto=proto,
        orig=tup(e.tuple_orig),
        reply=tup(e.tuple_reply),
        status=int(e.status or 0),
        tcp_state=state,
        mark=int(e.mark or 0),
        timeout=int(e.timeout or 0),
    )
