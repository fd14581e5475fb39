"""The XDP step: the fast path (pinned programs, attachment, deny list) and its offloader.

``render`` turns the document into an :class:`XdpPart` (data plane, XDP mode, bulk-TCP
policy and the deny rules as XDP deny-list records, in document order); ``apply``
attaches (or adopts) the programs and loads the deny list, or detaches everything for
``data_plane: kernel``; ``tick`` reports the conntrack offloader, which runs in its own
thread (:mod:`xdp.offload_events`; ``offloader="dump"`` keeps the dump-per-sync
:class:`xdp.offload.Offloader`, the reference the ``flows`` benchmark compares with).

The deny list means what the nftables deny rules mean (forwarded traffic from the
inside): the step tells the program the inside interface and the gateway's own
addresses (re-read once a second: an HA takeover adds the NAT address), to which
nothing is denied.

Programs and maps are pinned under ``/sys/fs/bpf/spectra/<instance>``; a restarted agent
adopts them (no recompile, no re-attach when they are still attached) and rebuilds the
offloader's view from kernel conntrack plus the pinned flow table.

Two-arm GWLB flows join the fast path while the GWLB step has linked its programs to
this data plane (``Dataplane.gwlb_ifindex``, read from the pins every sync, so the two
steps need no reference to each other).
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, cast

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from control.config import ConfigDocument
from control.steps.base import Host, OffloaderKind, StepContext
from control.xdp_denylog import Names, XdpDenyLog
from xdp import Dataplane, DenyRule, libbpf, loader
from xdp.ctevents import EventKernel
from xdp.ctnetlink import PyrouteKernel
from xdp.fastpath_share import FastpathShares
from xdp.loader import AttachMode, BuildOptions
from xdp.offload import BulkTcp, Interface, Offloader, Timeouts
from xdp.offload_events import EventOffloader, OffloadWorker
from xdp.records import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP

log = logging.getLogger("spectra.control")

# Offloaded TCP flows bypass conntrack's window tracking; the FIN handed back later must
# not be judged INVALID (the kernel's own flowtable sets this per flow).
BE_LIBERAL = Path("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal")
PROTO_NUMBERS = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "icmp": IPPROTO_ICMP}
SCOPE_SECONDS = 1.0  # how often the gateway's own addresses are re-read for the deny list


@dataclass(frozen=True, slots=True)
class XdpPart:
    """What the document asks of the fast path on this instance."""

    data_plane: str
    inside: str
    outside: str
    xdp_mode: str
    bulk_tcp: BulkTcp
    deny_rules: tuple[DenyRule, ...]
    deny_samples: int = 0  # sampled deny drops per second and CPU (firewall log)
    deny_names: Names = ()  # (path, comment) of each deny rule, in rule-id order


def xdp_deny_rules(doc: ConfigDocument) -> list[DenyRule]:
    """The document's deny rules as XDP deny-list records, in document order (a side
    naming an IP set carries the set's prefixes)."""
    sets = doc.rules.ip_sets
    return [
        DenyRule(
            src=rule.src,
            dst=rule.dst,
            proto=None if rule.proto is None else PROTO_NUMBERS[rule.proto],
            ports=rule.ports,
            src_set=None if rule.src_set is None else sets[rule.src_set].prefixes,
            dst_set=None if rule.dst_set is None else sets[rule.dst_set].prefixes,
        )
        for rule in doc.rules.entries
        if rule.action == "deny"
    ]


def _interface(ifname: str | int) -> Interface:
    index = ifname if isinstance(ifname, int) else socket.if_nametoindex(ifname)
    with IPRoute() as ipr:
        link = ipr.get_links(index)[0]
        return Interface(int(link["index"]), str(link.get_attr("IFLA_ADDRESS")))


def local_addresses() -> list[IPv4Address]:
    """Every IPv4 address of this network namespace, sorted (the kernel delivers a packet
    to any of them locally, whichever interface holds it)."""
    with IPRoute() as ipr:
        found = {
            IPv4Address(str(a.get_attr("IFA_ADDRESS"))) for a in ipr.get_addr(family=socket.AF_INET)
        }
    return sorted(found)


def detach_all(*ifnames: str) -> None:
    """Back to the kernel path: established flows continue there (conntrack kept them)."""
    for ifname in ifnames:
        loader.detach(ifname)


class FastPath:
    """Attached XDP programs plus the offloader for one instance."""

    def __init__(
        self,
        instance: str,
        inside_if: str,
        outside_if: str,
        *,
        flow_table_size: int = 262144,
        idle_seconds: float = 300.0,
        offloader: OffloaderKind = "events",
        shares: FastpathShares | None = None,
    ) -> None:
        self.interfaces = (inside_if, outside_if)
        self.shares = shares
        self.idle_seconds = idle_seconds
        self.kind = offloader
        self.dataplane = Dataplane.load(instance, BuildOptions(flow_table_size=flow_table_size))
        self.kernel: PyrouteKernel | EventKernel = (
            EventKernel() if offloader == "events" else PyrouteKernel()
        )
        self.offloader: Offloader | EventOffloader | None = None
        self.worker: OffloadWorker | None = None
        self._deny_scope: tuple[int, list[IPv4Address]] | None = None

    def converge(self, xdp_mode: str = "auto", bulk_tcp: BulkTcp = "fast_path") -> dict[str, str]:
        """Attach where our program is not attached yet (replacing another build's);
        returns the XDP mode per interface."""
        modes = {}
        ours = libbpf.obj_id(self.dataplane.program_fd())
        for ifname in self.interfaces:
            mode = loader.attached_mode(ifname)
            if mode is not None and loader.attached_id(ifname) != ours:
                # another build's program (an upgrade): it reads maps we no longer write
                log.warning("%s: replacing an XDP program of another build", ifname)
                loader.detach(ifname)
                mode = None
            if mode is None:
                mode = loader.attach(
                    ifname, self.dataplane.program_fd(), cast(AttachMode, xdp_mode)
                )
            else:
                log.debug("%s: XDP already attached (%s mode), adopting", ifname, mode)
            self.dataplane.set_tx_port(socket.if_nametoindex(ifname))
            modes[ifname] = mode
        BE_LIBERAL.write_text("1")
        if self.offloader is None:
            self.offloader = self._offloader()
        self.offloader.bulk_tcp = bulk_tcp
        self.offloader.timeouts = Timeouts.from_sysctl()  # the sysctl step ran first
        return modes

    def _offloader(self) -> Offloader | EventOffloader:
        inside, outside = (_interface(i) for i in self.interfaces)
        capacity = self.dataplane.flow_table.capacity
        if isinstance(self.kernel, EventKernel):
            offloader = EventOffloader(
                self.dataplane, self.kernel, inside, outside, capacity,
                idle_seconds=self.idle_seconds, shares=self.shares,
            )  # fmt: skip
            self.worker = OffloadWorker(offloader)
            self.worker.start()
            return offloader
        return Offloader(
            self.dataplane, self.kernel, inside, outside, capacity,
            idle_seconds=self.idle_seconds,
        )  # fmt: skip

    def refresh_deny_scope(self) -> None:
        """Tell the program where the deny list applies: packets arriving on the inside
        interface that are not addressed to the gateway (every IPv4 address of this
        network namespace: an HA takeover adds the NAT address).  Written only when it
        changed."""
        scope = (socket.if_nametoindex(self.interfaces[0]), local_addresses())
        if scope != self._deny_scope:
            self.dataplane.set_deny_scope(*scope)
            self._deny_scope = scope

    def sync(self) -> dict[str, Any]:
        if self.offloader is None:
            return {}
        gwlb_ifindex = self.dataplane.gwlb_ifindex()
        current = self.offloader.gwlb
        if gwlb_ifindex is None:
            self.offloader.gwlb = None
        elif current is None or current.ifindex != gwlb_ifindex:
            try:
                self.offloader.gwlb = _interface(gwlb_ifindex)
            except (NetlinkError, OSError, IndexError) as exc:  # linked interface gone
                log.warning("GWLB interface %d of the fast path: %s", gwlb_ifindex, exc)
                self.offloader.gwlb = None
        if isinstance(self.offloader, EventOffloader):
            status = self.offloader.snapshot()  # the worker thread does the work
            if self.worker is not None and self.worker.error:
                status["error"] = self.worker.error
            return status
        self.offloader.sync()
        return self.offloader.stats.as_dict()

    def close(self) -> None:
        """Release handles; the pinned, attached programs keep forwarding."""
        if self.worker is not None:
            self.worker.stop()
        self.kernel.close()
        self.dataplane.close()


class XdpStep:
    """Attach (or adopt) the fast path and load the deny list, or detach for ``kernel``."""

    name = "xdp"

    def __init__(self, context: StepContext) -> None:
        self.instance = context.instance
        self.flow_table_size = context.flow_table_size
        self.idle_seconds = context.idle_seconds
        self.offloader: OffloaderKind = context.offloader
        self.shares = context.shares
        self.firewall_feed = context.firewall_feed
        self.deny_log: XdpDenyLog | None = None
        self.fast_path: FastPath | None = None
        self.modes: dict[str, str] = {}
        self._next_scope = time.monotonic()

    @staticmethod
    def render(doc: ConfigDocument, host: Host) -> XdpPart:
        ifs, fw = doc.interfaces, doc.logging.firewall_logs
        return XdpPart(
            ifs.data_plane,
            ifs.inside,
            ifs.outside,
            ifs.xdp_mode,
            ifs.bulk_tcp,
            tuple(xdp_deny_rules(doc)),
            fw.xdp_samples_per_second if fw.enabled else 0,
            tuple((f"rules.entries[{i}]", r.comment or "") for i, r in enumerate(doc.rules.entries)
                  if r.action == "deny"),
        )  # fmt: skip

    def apply(self, part: XdpPart) -> None:
        if part.data_plane == "kernel":
            self.close()
            self.fast_path = None
            detach_all(part.inside, part.outside)
            self.modes = {}
            return
        if self.fast_path is None or self.fast_path.interfaces != (part.inside, part.outside):
            self.close()
            self.fast_path = FastPath(
                self.instance,
                part.inside,
                part.outside,
                flow_table_size=self.flow_table_size,
                idle_seconds=self.idle_seconds,
                offloader=self.offloader,
                shares=self.shares,
            )
        self.modes = self.fast_path.converge(part.xdp_mode, part.bulk_tcp)
        self.fast_path.refresh_deny_scope()
        self.fast_path.dataplane.set_deny_rules(list(part.deny_rules))
        if self.deny_log is None or self.deny_log.dataplane is not self.fast_path.dataplane:
            self.deny_log = XdpDenyLog(self.fast_path.dataplane, self.firewall_feed)
        self.deny_log.configure(part.deny_samples, part.deny_names)

    def tick(self) -> dict[str, Any]:
        """One offloader pass (and, once a second, the deny scope); returns the
        offloader's counters."""
        if self.fast_path is None:
            return {}
        now = time.monotonic()
        if now >= self._next_scope:
            self._next_scope = now + SCOPE_SECONDS
            self.fast_path.refresh_deny_scope()
        status = self.fast_path.sync()
        if self.deny_log is not None and (samples := self.deny_log.counters()):
            status["deny_samples"] = samples
        return status

    def close(self) -> None:
        if self.deny_log is not None:
            self.deny_log.close()
            self.deny_log = None
        if self.fast_path is not None:
            self.fast_path.close()
