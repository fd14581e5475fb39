"""The L4 load balancer step: the document's ``load_balancer`` made real with nftables.

Render turns each listener into a :class:`~control.lb.VirtualService` (its addresses
resolved on this instance: ``"outside"`` / ``"inside"`` are the interfaces' addresses).
Apply starts or reconfigures the :class:`~control.lb_health.HealthMonitor` (backends
that stay keep their health) and applies the whole ``ip spectra_lb`` table with the
current health in one transaction. From then on the monitor's thread rewrites one
listener's map in one transaction whenever its healthy set changes (a backend failing
or passing its checks, a target group sync); established connections keep their
conntrack mapping either way. ``tick`` re-applies the table if it disappeared and
reports each backend's health; ``close`` stops the monitor and leaves the table.

Target groups (``target_group_arn``) are read through the product's session factory:
the agent sets :attr:`LoadBalancerStep.aws_client` when it runs with ``--aws``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from control import lb, nftables
from control.config import ConfigDocument
from control.lb import Check, LbPart, Target, VirtualService
from control.lb_elbv2 import read_targets
from control.lb_health import HealthMonitor
from control.steps.base import ConvergeError, Host, RenderError, StepBase, StepContext

log = logging.getLogger("spectra.control")

CHECK_SECONDS = 1.0


def _service(i: int, listener: Any, addresses: tuple[str, ...]) -> VirtualService:
    hc = listener.health_check
    check = Check(hc.protocol, hc.port, hc.path, float(hc.interval_seconds),
                  hc.timeout_seconds, hc.healthy_threshold, hc.unhealthy_threshold)  # fmt: skip
    backends = tuple(Target(str(b.address), b.port, b.weight) for b in listener.backends)
    return VirtualService(i, listener.name, addresses, listener.proto, listener.port,
                          listener.algorithm, backends, listener.target_group_arn,
                          check)  # fmt: skip


class LoadBalancerStep(StepBase):
    name = "load_balancer"
    aws_client: Callable[[str], Any] | None = None  # SessionFactory.client, set on AWS

    def __init__(self, context: StepContext) -> None:
        super().__init__(context)
        self.part: LbPart | None = None
        self.monitor: HealthMonitor | None = None
        self.updates = 0
        self._nft = threading.Lock()
        self._next_check = 0.0

    @staticmethod
    def render(doc: ConfigDocument, host: Host) -> LbPart | None:
        section = doc.load_balancer
        if not section.enabled or not section.listeners:
            return None
        services = []
        for i, listener in enumerate(section.listeners):
            if isinstance(listener.address, IPv4Address):
                addresses: tuple[str, ...] = (str(listener.address),)
            else:
                ifname = getattr(doc.interfaces, listener.address)
                addresses = tuple(host.addresses(ifname))
                if not addresses:
                    raise RenderError(f"load_balancer.listeners[{i}].address",
                                      f"{listener.address!r}: {ifname!r} has no IPv4 address "
                                      "here; accepted: outside, inside or an address")  # fmt: skip
            services.append(_service(i, listener, addresses))
        return LbPart(tuple(services), doc.interfaces.inside,
                      float(section.target_group_sync_seconds),
                      tuple(section.backend_networks))  # fmt: skip

    def apply(self, part: LbPart | None) -> None:
        if part is None:
            self.close()
            with self._nft:
                if self.part is not None or nftables.table_present(lb.FAMILY, lb.TABLE):
                    nftables.apply_ruleset(f"table {lb.FAMILY} {lb.TABLE}\n"
                                           f"delete table {lb.FAMILY} {lb.TABLE}\n")  # fmt: skip
                self.part = None
            return
        with self._nft:
            lbpart = part
            for vs in lbpart.services:
                if vs.target_group_arn is not None and self.aws_client is None:
                    raise ConvergeError(
                        f"load_balancer.listeners[{vs.index}].target_group_arn: target "
                        "groups are read through the AWS session factory (spectra run --aws)"
                    )
            if self.monitor is None:
                self.monitor = HealthMonitor(self._changed, lbpart.sync_seconds)
            self.monitor.sync = self._sync if self.aws_client is not None else None
            self.monitor.configure(lbpart.services, lbpart.sync_seconds)
            healthy = {vs.index: self.monitor.healthy(vs.index) for vs in lbpart.services}
            nftables.apply_ruleset(lb.render_table(lbpart, healthy))
            self.part = lbpart

    def networks(self) -> tuple[IPv4Network, ...]:
        part = self.part
        return part.networks if part is not None else ()

    def _sync(self, arn: str) -> tuple[Target, ...]:
        """A target group's healthy targets that are in ``backend_networks``."""
        assert self.aws_client is not None
        found = read_targets(self.aws_client, arn)
        inside = tuple(
            t for t in found if any(IPv4Address(t.address) in n for n in self.networks())
        )
        if len(inside) != len(found):
            log.warning("target group %s: ignoring targets outside backend_networks: %s", arn,
                        sorted(t.key for t in set(found) - set(inside)))  # fmt: skip
        return inside

    def _changed(self, index: int) -> None:
        """One listener's healthy set changed: its map, in one transaction."""
        with self._nft:
            if self.part is None or self.monitor is None:
                return
            vs = next((v for v in self.part.services if v.index == index), None)
            if vs is None:
                return
            nftables.apply_ruleset(lb.map_update(vs, self.monitor.healthy(index)))
            self.updates += 1

    def tick(self) -> dict[str, Any]:
        if self.part is None or self.monitor is None:
            return {}
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + CHECK_SECONDS
            if not nftables.table_present(lb.FAMILY, lb.TABLE):
                log.warning("nftables table %s %s disappeared; re-applying", lb.FAMILY, lb.TABLE)
                with self._nft:
                    part = self.part
                    healthy = {vs.index: self.monitor.healthy(vs.index) for vs in part.services}
                    nftables.apply_ruleset(lb.render_table(part, healthy))
        listeners = self.monitor.status()
        up = all(
            any(b["state"] != "unhealthy" for b in entry["backends"].values())
            for entry in listeners.values()
        )
        return {"healthy": up, "map_updates": self.updates, "listeners": listeners}

    def close(self) -> None:
        """Stop the monitor (outside the nft lock: its thread may be waiting for it)."""
        with self._nft:
            monitor, self.monitor = self.monitor, None
        if monitor is not None:
            monitor.stop()
