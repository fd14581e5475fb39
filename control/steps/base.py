"""Converging one instance to a config document, all or nothing.

Every document is first rendered completely (pure functions: the nftables script, the
XDP deny list, sysctls); nothing touches the kernel until rendering succeeded. Then the
steps apply in order. When a step fails, every step is re-applied with the last known
good document and the failure is raised, so the instance is never left half-applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pyroute2 import IPRoute

from control import nftables
from control.config import ConfigDocument, render_nftables, xdp_deny_rules
from control.fastpath import FastPath, detach_all
from xdp import DenyRule

log = logging.getLogger("spectra.control")

SYSCTL = Path("/proc/sys")


class ConvergeError(RuntimeError):
    """A step could not be applied; the instance was rolled back to its last good state."""


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything a document means for this instance, rendered before anything applies."""

    doc: ConfigDocument
    nft_script: str
    deny_rules: tuple[DenyRule, ...]
    sysctls: tuple[tuple[str, str], ...]
    outside_addresses: tuple[str, ...]


def interface_ipv4(ifname: str) -> list[str]:
    """IPv4 addresses of ``ifname`` in the current network namespace."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise ConvergeError(f"interfaces: {ifname!r} does not exist in this network namespace")
        return [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=found[0], family=2)]


Addresses = Callable[[str], list[str]]


def render(doc: ConfigDocument, addresses: Addresses = interface_ipv4) -> Plan:
    """Pure apart from reading interface addresses; raises before anything is applied."""
    addresses(doc.interfaces.inside)
    outside = addresses(doc.interfaces.outside)
    if doc.gwlb.enabled and doc.gwlb.interface:
        addresses(doc.gwlb.interface)  # exists here, before anything is applied
    try:
        script = render_nftables(doc, outside)
    except nftables.NftError as exc:
        raise ConvergeError(str(exc)) from exc
    t = doc.nat.timeouts
    sysctls = (
        ("net/ipv4/ip_forward", "1"),
        ("net/netfilter/nf_conntrack_tcp_timeout_established", str(t.tcp_established)),
        ("net/netfilter/nf_conntrack_udp_timeout", str(t.udp)),
        ("net/netfilter/nf_conntrack_udp_timeout_stream", str(t.udp_stream)),
        ("net/netfilter/nf_conntrack_icmp_timeout", str(t.icmp)),
    )
    return Plan(doc, script, tuple(xdp_deny_rules(doc)), sysctls, tuple(outside))


class Step(Protocol):
    name: str

    def apply(self, plan: Plan) -> None: ...


class SysctlStep:
    name = "sysctl"

    def apply(self, plan: Plan) -> None:
        for key, value in plan.sysctls:
            (SYSCTL / key).write_text(value)


class NftStep:
    name = "nftables"

    def apply(self, plan: Plan) -> None:
        nftables.apply_ruleset(plan.nft_script)


class XdpStep:
    """Attach (or adopt) the fast path and load the deny list, or detach for ``kernel``."""

    name = "xdp"

    def __init__(self, instance: str, flow_table_size: int, idle_seconds: float) -> None:
        self.instance = instance
        self.flow_table_size = flow_table_size
        self.idle_seconds = idle_seconds
        self.fast_path: FastPath | None = None
        self.modes: dict[str, str] = {}

    def apply(self, plan: Plan) -> None:
        ifs = plan.doc.interfaces
        if ifs.data_plane == "kernel":
            if self.fast_path is not None:
                self.fast_path.close()
                self.fast_path = None
            detach_all(ifs.inside, ifs.outside)
            self.modes = {}
            return
        if self.fast_path is None or self.fast_path.interfaces != (ifs.inside, ifs.outside):
            if self.fast_path is not None:
                self.fast_path.close()
            self.fast_path = FastPath(
                self.instance,
                ifs.inside,
                ifs.outside,
                flow_table_size=self.flow_table_size,
                idle_seconds=self.idle_seconds,
            )
        self.modes = self.fast_path.converge(ifs.xdp_mode, ifs.bulk_tcp)
        self.fast_path.dataplane.set_deny_rules(list(plan.deny_rules))

    def sync(self) -> dict[str, Any]:
        return self.fast_path.sync() if self.fast_path is not None else {}

    def close(self) -> None:
        if self.fast_path is not None:
            self.fast_path.close()


class Converger:
    """Applies plans step by step and keeps the last plan that applied completely."""

    def __init__(self, steps: list[Step], addresses: Addresses = interface_ipv4) -> None:
        self.steps = steps
        self.addresses = addresses
        self.last_good: Plan | None = None

    def converge(self, doc: ConfigDocument) -> Plan:
        plan = render(doc, self.addresses)
        for step in self.steps:
            try:
                step.apply(plan)
            except Exception as exc:  # any failure of any step: roll back, then report
                self._rollback(step.name)
                raise ConvergeError(f"{step.name}: {exc}") from exc
        self.last_good = plan
        return plan

    def _rollback(self, failed: str) -> None:
        if self.last_good is None:
            log.error("%s failed with no earlier good state to return to", failed)
            return
        log.warning("%s failed: rolling back to the last good document", failed)
        for step in self.steps:
            try:
                step.apply(self.last_good)
            except Exception:
                log.exception("rollback of %s failed", step.name)
