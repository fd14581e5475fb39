"""The agent's side of the XDP fast path: load or adopt the pinned programs, attach them
to the inside and outside interfaces, and run the conntrack offloader.

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
from pathlib import Path
from typing import Any, cast

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from xdp import Dataplane, libbpf, loader
from xdp.loader import AttachMode, BuildOptions
from xdp.offload import BulkTcp, Offloader, Port, PyrouteKernel

log = logging.getLogger("spectra.control")

# Offloaded TCP flows bypass conntrack's window tracking; the FIN handed back later must
# not be judged INVALID (the kernel's own flowtable sets this per flow).
BE_LIBERAL = Path("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal")


def _port(ifname: str | int) -> Port:
    index = ifname if isinstance(ifname, int) else socket.if_nametoindex(ifname)
    with IPRoute() as ipr:
        link = ipr.get_links(index)[0]
        return Port(int(link["index"]), str(link.get_attr("IFLA_ADDRESS")))


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
    ) -> None:
        self.interfaces = (inside_if, outside_if)
        self.idle_seconds = idle_seconds
        self.dataplane = Dataplane.load(instance, BuildOptions(flow_table_size=flow_table_size))
        self.kernel = PyrouteKernel()
        self.offloader: Offloader | None = None

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
            inside, outside = self.interfaces
            self.offloader = Offloader(
                self.dataplane,
                self.kernel,
                _port(inside),
                _port(outside),
                self.dataplane.flow_table.capacity,
                idle_seconds=self.idle_seconds,
            )
        self.offloader.bulk_tcp = bulk_tcp
        return modes

    def sync(self) -> dict[str, Any]:
        if self.offloader is None:
            return {}
        gwlb_ifindex = self.dataplane.gwlb_ifindex()
        current = self.offloader.gwlb
        if gwlb_ifindex is None:
            self.offloader.gwlb = None
        elif current is None or current.ifindex != gwlb_ifindex:
            try:
                self.offloader.gwlb = _port(gwlb_ifindex)
            except (NetlinkError, OSError, IndexError) as exc:  # linked interface gone
                log.warning("GWLB interface %d of the fast path: %s", gwlb_ifindex, exc)
                self.offloader.gwlb = None
        self.offloader.sync()
        return self.offloader.stats.as_dict()

    def close(self) -> None:
        """Release handles; the pinned, attached programs keep forwarding."""
        self.kernel.close()
        self.dataplane.close()
