"""The agent's converge steps, one module each, and the framework that runs them.

Every step renders the document into its part (pure; every rejection happens here) and
applies the part (idempotent, reversible); :class:`Converger` renders all steps before
any applies and rolls every step back to the last good plan when one fails; ``tick`` is
the one periodic hook. To add a step: a module here with a class that has ``name``, a
static ``render``, ``apply``, ``tick`` and ``close`` and is constructed from a
:class:`StepContext` (:class:`StepBase` supplies those defaults), then one entry in
:data:`STEPS`.
"""

from __future__ import annotations

from typing import Any

from control.config import ConfigDocument
from control.steps.base import (
    AnyHost,
    ConvergeError,
    Converger,
    Host,
    KernelHost,
    Plan,
    RenderError,
    Step,
    StepBase,
    StepContext,
    render,
)
from control.steps.conntrack_sync import ConntrackSyncStep
from control.steps.gwlb import GwlbStep
from control.steps.haproxy import HaproxyStep
from control.steps.inspection import InspectionStep
from control.steps.lb import LoadBalancerStep
from control.steps.nftables import NftablesStep
from control.steps.squid import SquidStep
from control.steps.sysctl import SysctlStep
from control.steps.traffic_logs import TrafficLogsStep
from control.steps.xdp import XdpStep

# Apply order: the inspector is up before anything is queued to it; the GWLB programs
# link to the XDP fast path, so they come after it; conntrack sync and the proxy depend
# on none; nor do the proxy, TLS and L4 load-balancing services.
STEPS = (SysctlStep, NftablesStep, InspectionStep, XdpStep, GwlbStep, ConntrackSyncStep,
         SquidStep, HaproxyStep, LoadBalancerStep, TrafficLogsStep)  # fmt: skip


def build_steps(context: StepContext) -> list[Step[Any]]:
    """One instance of every step, in apply order."""
    return [cls(context) for cls in STEPS]


def dry_run(doc: ConfigDocument, outside: tuple[str, ...]) -> Plan:
    """Render ``doc`` as any instance would, without one: the config API's check
    (every interface exists, the outside one with ``outside`` addresses)."""
    return render(doc, STEPS, AnyHost(outside))


__all__ = [
    "STEPS",
    "AnyHost",
    "ConvergeError",
    "Converger",
    "Host",
    "KernelHost",
    "Plan",
    "RenderError",
    "Step",
    "StepBase",
    "StepContext",
    "build_steps",
    "dry_run",
    "render",
]
