"""The GWLB step: the document's ``gwlb`` section rendered into :class:`GwlbSettings`
(None: GWLB off) and applied onto the instance:

* the GWLB programs (:class:`geneve.Gwlb`): decap on the configured interface (XDP, or
  tc ingress when the configuration, the MTU or a shared XDP hook rules XDP out) and
  re-encap at its tc egress, in the configured mode, with the GWLB's idle timeout;
* one-arm routing: what arrived on the GWLB interface goes back out of it (policy rule
  ``iif <if> lookup 1081``, default route via the next hop), to be re-encapsulated;
  two-arm needs none (the main table routes out of the outside interface, and the
  nftables ruleset masquerades there);
* the health-check responder (:class:`geneve.HealthResponder`, TCP or HTTP) on the
  configured port, answering "healthy" while decap is attached;
* the fast-path link: two-arm with decap in XDP beside the XDP fast path links the GWLB
  programs to the instance's ``xdp.Dataplane`` (:meth:`geneve.Gwlb.link_fastpath`), so
  the offloader puts established GWLB flows on the fast path both ways; any other
  combination (one-arm, tc decap, ``data_plane: kernel``) unlinks them.

The nftables side (GWLB flows policed like the inside's and marked ``CT_MARK_GWLB``,
which the offloader reads) is rendered with the rest of the ruleset
(:mod:`control.steps.nftables`).  Pins and attachments outlive the agent; a
restarted agent adopts the pins and re-attaches in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import threading
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from control.config import ConfigDocument
from control.steps.base import Host, RenderError, StepContext
from geneve import Gwlb, GwlbError, HealthResponder
from xdp import Dataplane, loader

log = logging.getLogger("spectra.control")

ONE_ARM_TABLE = 1081
SYSCTL_IPV4_CONF = Path("/proc/sys/net/ipv4/conf")
ONE_ARM_PREF = 1081


class GwlbStepError(RuntimeError):
    """The GWLB section could not be applied (interface, address, attach, routing)."""


@dataclass(frozen=True, slots=True)
class GwlbSettings:
    """What one document asks of this instance's GWLB data plane."""

    iface: str
    mode: str
    decap_hook: str
    idle_timeout: float
    health_protocol: str
    health_port: int
    health_path: str  # HTTP checks of another path get 404
    next_hop: str | None
    allowed_sources: tuple[IPv4Network, ...]
    shares_xdp_hook: bool  # the interface also carries xdp_gateway: decap must use tc
    xdp_fast_path: bool  # data_plane: xdp (the instance's Dataplane is pinned)

    @classmethod
    def from_doc(cls, doc: ConfigDocument) -> GwlbSettings | None:
        iface = doc.gwlb_interface
        if iface is None:
            return None
        shared = doc.interfaces.data_plane == "xdp" and iface in (
            doc.interfaces.inside,
            doc.interfaces.outside,
        )
        return cls(
            iface=iface,
            mode=doc.gwlb.mode,
            decap_hook=doc.gwlb.decap_hook,
            idle_timeout=float(doc.gwlb.flow_idle_timeout_seconds),
            health_protocol=doc.gwlb.health_check.protocol,
            health_port=doc.gwlb.health_check.port,
            health_path=doc.gwlb.health_check.path,
            next_hop=str(doc.gwlb.next_hop) if doc.gwlb.next_hop else None,
            allowed_sources=tuple(doc.gwlb.allowed_sources),
            shares_xdp_hook=shared,
            xdp_fast_path=doc.interfaces.data_plane == "xdp",
        )


class _Health:
    """A HealthResponder on its own event loop thread."""

    def __init__(self, port: int, path: str, healthy: Any) -> None:
        self.port, self.path = port, path
        self.loop = asyncio.new_event_loop()
        self.responder = HealthResponder("0.0.0.0", port, healthy, path)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        future = asyncio.run_coroutine_threadsafe(self.responder.start(), self.loop)
        try:
            future.result(timeout=5)
        except Exception:
            self.stop()
            raise

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.responder.stop(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


class GwlbStep:
    """Converge step for the ``gwlb`` section (after the XDP step)."""

    name = "gwlb"

    def __init__(self, context: StepContext) -> None:
        self.instance = context.instance
        self.settings: GwlbSettings | None = None
        self.gwlb: Gwlb | None = None
        self.health: _Health | None = None
        self.hook_reason: str | None = None
        self.fast_path_linked = False

    # -- render, apply -----------------------------------------------------------------

    @staticmethod
    def render(doc: ConfigDocument, host: Host) -> GwlbSettings | None:
        if doc.gwlb.enabled and doc.gwlb.interface:
            host.addresses(doc.gwlb.interface)  # exists here, before anything is applied
        wanted = GwlbSettings.from_doc(doc)
        if wanted is not None and wanted.shares_xdp_hook and wanted.decap_hook == "xdp":
            raise RenderError(
                "gwlb.decap_hook",
                f"xdp is impossible on {wanted.iface!r}, whose XDP hook runs the fast path "
                "(data_plane: xdp); accepted here: auto or tc",
            )
        return wanted

    def apply(self, part: GwlbSettings | None) -> None:
        wanted = part
        if wanted is None:
            self._disable()
            self._unlink_left_over()
            return
        if self.settings is not None and self.settings.iface != wanted.iface:
            self._disable()
        if self.gwlb is None or self.settings != wanted:
            if self.gwlb is not None:
                self.gwlb.close()
            self.gwlb = Gwlb(
                self.instance,
                wanted.iface,
                mode="one-arm" if wanted.mode == "one-arm" else "two-arm",
                health_port=wanted.health_port,
                idle_timeout=wanted.idle_timeout,
                allowed_sources=wanted.allowed_sources,
            )
        hook = "tc" if wanted.shares_xdp_hook else wanted.decap_hook
        try:
            attached = self.gwlb.load().attach(hook)  # type: ignore[arg-type]
        except GwlbError as exc:
            raise GwlbStepError(str(exc)) from exc
        self.hook_reason = (
            f"{wanted.iface} carries the XDP fast path: decap at tc ingress"
            if wanted.shares_xdp_hook
            else attached.reason
        )
        self._link_fast_path(wanted, attached.hook)
        self._route(wanted)
        self._serve_health(wanted.health_port, wanted.health_path)
        self.settings = wanted

    def _link_fast_path(self, wanted: GwlbSettings | None, hook: str | None) -> None:
        """Link (two-arm, XDP decap, XDP fast path) or unlink the GWLB programs and
        the instance's pinned fast path."""
        gwlb = self.gwlb
        if gwlb is None:
            return
        link = (
            wanted is not None
            and wanted.mode == "two-arm"
            and wanted.xdp_fast_path
            and hook in ("native", "generic")
        )
        pinned = loader.is_pinned(loader.pin_dir_for(self.instance))
        dataplane = Dataplane.adopt(self.instance) if pinned else None
        try:
            if link and dataplane is not None:
                gwlb.link_fastpath(dataplane)
            else:
                gwlb.unlink_fastpath(dataplane)
        finally:
            if dataplane is not None:
                dataplane.close()
        self.fast_path_linked = link and dataplane is not None

    def _unlink_left_over(self) -> None:
        """No GWLB in the document, but the pinned fast path may still be linked to the
        GWLB programs by an earlier agent (stopped while GWLB was on): unlink it, or the
        fast path would keep a third port that may no longer exist."""
        pin_dir = loader.pin_dir_for(self.instance)
        if not loader.is_pinned(pin_dir):
            return
        dataplane = Dataplane.adopt(self.instance)
        try:
            if dataplane.gwlb_ifindex() is not None:
                dataplane.unlink_gwlb()
                log.info("%s: unlinked a GWLB fast path left by an earlier agent", self.instance)
        finally:
            dataplane.close()

    def _disable(self) -> None:
        if self.health is not None:
            self.health.stop()
            self.health = None
        if self.settings is not None:
            _one_arm_route(None, None)
        if self.gwlb is not None:
            with contextlib.suppress(GwlbError, OSError):  # never loaded: nothing linked
                self._link_fast_path(None, None)
            self.gwlb.detach()
            self.gwlb.close()
            self.gwlb = None
        self.settings = None
        self.hook_reason = None

    def _route(self, wanted: GwlbSettings) -> None:
        if wanted.mode != "one-arm":
            _one_arm_route(None, None)
            return
        next_hop = wanted.next_hop or subnet_router(wanted.iface)
        _one_arm_route(wanted.iface, next_hop)
        # Traffic leaves by the interface it came in on: no ICMP redirects to the GWLB.
        for conf in ("all", wanted.iface):
            (SYSCTL_IPV4_CONF / conf / "send_redirects").write_text("0")

    def _serve_health(self, port: int, path: str) -> None:
        if self.health is not None and (self.health.port, self.health.path) == (port, path):
            return
        if self.health is not None:
            self.health.stop()
            self.health = None
        try:
            self.health = _Health(port, path, self.healthy)
        except OSError as exc:
            raise GwlbStepError(f"gwlb.health_check.port {port}: cannot listen: {exc}") from exc

    # -- state -------------------------------------------------------------------------

    def healthy(self) -> bool:
        """HTTP checks get 200 while decap is attached (TCP checks: while listening)."""
        gwlb = self.gwlb
        return gwlb is not None and gwlb.attached_hook() is not None

    def tick(self) -> dict[str, Any]:
        """The GWLB data plane's status (no periodic work: the programs run unattended)."""
        if self.settings is None or self.gwlb is None:
            return {"enabled": False}
        s = self.settings
        try:
            counters = {k: v["packets"] for k, v in self.gwlb.counters().items() if v["packets"]}
            hook = self.gwlb.attached_hook()
        except (OSError, GwlbError) as exc:
            return {"enabled": True, "error": str(exc)}
        return {
            "enabled": True,
            "interface": s.iface,
            "mode": s.mode,
            "hook": hook,
            "hook_requested": s.decap_hook,
            "hook_reason": self.hook_reason,
            "fast_path": self.fast_path_linked,
            "idle_timeout": s.idle_timeout,
            "health_check": {
                "protocol": s.health_protocol,
                "port": s.health_port,
                "path": s.health_path,
                "listening": self.health is not None,
            },
            "counters": counters,
        }

    def close(self) -> None:
        """Stop the responder and drop handles; the attached programs keep working."""
        if self.health is not None:
            self.health.stop()
            self.health = None
        if self.gwlb is not None:
            self.gwlb.close()


def subnet_router(ifname: str) -> str:
    """The first address of ``ifname``'s IPv4 subnet (the VPC router on AWS)."""
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)
        if not index:
            raise GwlbStepError(f"gwlb.interface {ifname!r} does not exist")
        for addr in ipr.get_addr(index=index[0], family=socket.AF_INET):
            net = ipaddress.ip_interface(f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}")
            return str(net.network.network_address + 1)
    raise GwlbStepError(
        f"gwlb.interface {ifname!r} has no IPv4 address: set gwlb.next_hop for one-arm mode"
    )


def _one_arm_route(ifname: str | None, next_hop: str | None) -> None:
    """Install (or, with None, remove) the one-arm policy route."""
    with IPRoute() as ipr:
        with contextlib.suppress(NetlinkError):
            ipr.rule("del", table=ONE_ARM_TABLE, priority=ONE_ARM_PREF)
        with contextlib.suppress(NetlinkError):
            ipr.flush_routes(table=ONE_ARM_TABLE)
        if ifname is None or next_hop is None:
            return
        index = ipr.link_lookup(ifname=ifname)
        if not index:
            raise GwlbStepError(f"gwlb.interface {ifname!r} does not exist")
        ipr.route("replace", dst="0.0.0.0/0", gateway=next_hop, oif=index[0], table=ONE_ARM_TABLE)
        ipr.rule("add", iifname=ifname, table=ONE_ARM_TABLE, priority=ONE_ARM_PREF)
