"""The step framework: render a document into parts, then apply them, all or nothing.

A converge step has two phases. ``render`` turns the document into the step's *part*:
pure (it reads only what :class:`Host` tells it about this machine), and everything
that can be rejected is rejected here, so the config API's dry run rejects it too.
``apply`` makes the part real: idempotent (applying the same part twice changes
nothing) and reversible (applying the previous part restores the previous state).

:class:`Converger` renders every step before any applies (a :class:`Plan`), then
applies the parts in step order. When a step fails, every step re-applies its part of
the last good plan and the failure is raised: the instance is never left half-applied.
``tick`` is the one hook for periodic work (supervision, offload, re-checks); it
returns the step's status for ``spectra status``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

from control.config import ConfigDocument
from control.logfile import Feed
from xdp.fastpath_share import FastpathShares

log = logging.getLogger("spectra.control")

P = TypeVar("P")
P_co = TypeVar("P_co", covariant=True)
# The XDP offloader: conntrack events in a thread, or the dump-per-tick reference.
OffloaderKind = Literal["events", "dump"]


class ConvergeError(RuntimeError):
    """A document could not be rendered or applied on this instance."""


class RenderError(ConvergeError):
    """A document that no instance could apply; ``path`` names the field."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class Host(Protocol):
    """What rendering may know about the machine it renders for."""

    def addresses(self, ifname: str) -> list[str]:
        """IPv4 addresses of ``ifname``; raises :class:`ConvergeError` if it is absent."""
        ...

    def networks(self, ifname: str) -> list[str]:
        """IPv4 addresses of ``ifname`` with their prefix (``10.0.1.11/24``)."""
        ...

    def zone(self) -> str | None:
        """This instance's Availability Zone (``None``: not on AWS, or any zone)."""
        ...


@dataclass(frozen=True, slots=True)
class AnyHost:
    """A host on which every interface exists with ``outside`` addresses: the config
    API's dry run, which validates a document without knowing the gateway."""

    outside: tuple[str, ...]

    def addresses(self, ifname: str) -> list[str]:
        return list(self.outside)

    def networks(self, ifname: str) -> list[str]:
        return [f"{a}/32" for a in self.outside]

    def zone(self) -> str | None:
        return None


class KernelHost:
    """This machine, as the agent sees it: addresses from the current network namespace,
    and the Availability Zone the instance metadata named (set once known)."""

    def __init__(self, zone: str | None = None) -> None:
        self.availability_zone = zone

    def zone(self) -> str | None:
        return self.availability_zone

    def addresses(self, ifname: str) -> list[str]:
        return [n.partition("/")[0] for n in self.networks(ifname)]

    def networks(self, ifname: str) -> list[str]:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                raise ConvergeError(
                    f"interfaces: {ifname!r} does not exist in this network namespace"
                )
            return [
                f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                for a in ipr.get_addr(index=found[0], family=2)
            ]


@dataclass(frozen=True, slots=True)
class StepContext:
    """What every step is constructed with: who this instance is, where it keeps state."""

    instance: str
    run_dir: Path
    log_dir: Path
    flow_table_size: int = 262144
    idle_seconds: float = 300.0
    offloader: OffloaderKind = "events"
    # the offloader hands each flow's fast-path counters to the flow log through this
    shares: FastpathShares = field(default_factory=FastpathShares)
    # inspection alerts and drops join the firewall log's stream through this
    alert_feed: Feed = field(default_factory=Feed)
    # the XDP deny list's sampled drops join the firewall log through this
    firewall_feed: Feed = field(default_factory=Feed)


class Renders(Protocol[P_co]):
    """The pure half of a step: a class (or instance) that renders a document."""

    name: str

    def render(self, doc: ConfigDocument, host: Host) -> P_co:
        """The step's part of ``doc``; pure; raises :class:`RenderError`."""
        ...


class Step(Renders[P], Protocol[P]):
    """One converge step (sysctl, nftables, inspection, xdp, gwlb, ...); its ``render``
    is a staticmethod, so the config API renders with the class alone."""

    def apply(self, part: P) -> None:
        """Make ``part`` real; idempotent; raise on failure."""
        ...

    def tick(self) -> dict[str, Any]:
        """Periodic work between converges; returns the step's status."""
        ...

    def close(self) -> None:
        """Release handles; the data plane stays as applied."""
        ...


class StepBase:
    """Defaults for steps with no periodic work and nothing to release."""

    def __init__(self, context: StepContext) -> None:
        self.context = context

    def tick(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything a document means for this instance, rendered before anything applies."""

    doc: ConfigDocument
    outside_addresses: tuple[str, ...]
    parts: Mapping[str, Any]


def render(doc: ConfigDocument, steps: Sequence[Renders[Any]], host: Host) -> Plan:
    """Render every step's part; raises before anything is applied."""
    host.addresses(doc.interfaces.inside)  # both exist here, before anything is applied
    outside = tuple(host.addresses(doc.interfaces.outside))
    return Plan(doc, outside, {step.name: step.render(doc, host) for step in steps})


class Converger:
    """Applies plans step by step and keeps the last plan that applied completely."""

    def __init__(self, steps: Sequence[Step[Any]], host: Host) -> None:
        self.steps = list(steps)
        self.host = host
        self.last_good: Plan | None = None

    def render(self, doc: ConfigDocument) -> Plan:
        return render(doc, self.steps, self.host)

    def converge(self, doc: ConfigDocument) -> Plan:
        plan = self.render(doc)
        for step in self.steps:
            try:
                step.apply(plan.parts[step.name])
            except Exception as exc:  # any failure of any step: roll back, then report
                self._rollback(step.name)
                raise ConvergeError(f"{step.name}: {exc}") from exc
        self.last_good = plan
        return plan

    def tick(self) -> dict[str, dict[str, Any]]:
        """Every step's periodic work; a failing step is logged, the others still run."""
        status: dict[str, dict[str, Any]] = {}
        for step in self.steps:
            try:
                status[step.name] = step.tick()
            except Exception as exc:  # one step's failure must not stop the agent
                log.error("%s tick failed: %s", step.name, exc)
                status[step.name] = {"error": str(exc)}
        return status

    def close(self) -> None:
        for step in reversed(self.steps):
            try:
                step.close()
            except Exception:
                log.exception("closing %s failed", step.name)

    def _rollback(self, failed: str) -> None:
        if self.last_good is None:
            log.error("%s failed with no earlier good state to return to", failed)
            return
        log.warning("%s failed: rolling back to the last good document", failed)
        for step in self.steps:
            try:
                step.apply(self.last_good.parts[step.name])
            except Exception:
                log.exception("rollback of %s failed", step.name)
