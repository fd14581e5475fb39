"""The agent's side of the XDP fast path: load or adopt the pinned programs, attach them
to the inside and outside interfaces, and run the conntrack offloader.

Programs and maps are pinned under ``/sys/fs/bpf/spectra/<instance>``; a restarted agent
adopts them (no recompile, no re-attach when they are still attached) and rebuilds the
offloader's view from kernel conntrack plus the pinned flow table.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from pyroute2 import IPRoute

from xdp import Dataplane, loader
from xdp.loader import AttachMode, BuildOptions
from xdp.offload import Offloader, Port, PyrouteKernel

if TYPE_CHECKING:
    from control.agent import AgentSettings

log = logging.getLogger("spectra.control")

# Offloaded TCP flows bypass conntrack's window tracking; the FIN handed back later must
# not be judged INVALID (the kernel's own flowtable sets this per flow).
BE_LIBERAL = Path("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal")


def _port(ifname: str) -> Port:
    with IPRoute() as ipr:
        link = ipr.get_links(socket.if_nametoindex(ifname))[0]
        return Port(int(link["index"]), str(link.get_attr("IFLA_ADDRESS")))


def detach_all(*ifnames: str) -> None:
    """Back to the kernel path: established flows continue there (conntrack kept them)."""
    for ifname in ifnames:
        loader.detach(ifname)


class FastPath:
    """Attached XDP programs plus the offloader for one instance."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        opts = BuildOptions(flow_table_size=settings.flow_table_size)
        self.dataplane = Dataplane.load(settings.instance, opts)
        self.kernel = PyrouteKernel()
        self.offloader: Offloader | None = None

    def converge(self) -> dict[str, str]:
        """Attach where nothing is attached; returns the XDP mode per interface."""
        s = self.settings
        modes = {}
        for ifname in (s.inside_if, s.outside_if):
            mode = loader.attached_mode(ifname)
            if mode is None:
                mode = loader.attach(
                    ifname, self.dataplane.program_fd(), cast(AttachMode, s.xdp_mode)
                )
            else:
                log.debug("%s: XDP already attached (%s mode), adopting", ifname, mode)
            self.dataplane.set_tx_port(socket.if_nametoindex(ifname))
            modes[ifname] = mode
        BE_LIBERAL.write_text("1")
        if self.offloader is None:
            self.offloader = Offloader(
                self.dataplane,
                self.kernel,
                _port(s.inside_if),
                _port(s.outside_if),
                self.dataplane.flow_table.capacity,
                idle_seconds=s.idle_seconds,
            )
        return modes

    def sync(self) -> dict[str, Any]:
        assert self.offloader is not None
        self.offloader.sync()
        return self.offloader.stats.as_dict()

    def close(self) -> None:
        """Release handles; the pinned, attached programs keep forwarding."""
        self.kernel.close()
        self.dataplane.close()
