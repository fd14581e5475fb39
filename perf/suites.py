"""The benchmark suites ``python -m perf`` runs: one interface, one registry.

A suite is a module with ``run(args, target, progress) -> list[Result]``
(:class:`SuiteModule`): ``args`` is the parsed command line (``--rate``, ``--runs``,
``--seconds`` are None when not given, and each suite has its own defaults), ``target``
the machines to measure, ``progress`` a one-line-status callback. A module may also
have ``summary(results) -> str``, printed after the table. The registry,
:data:`SUITES`, says which module runs a suite, the tools it needs, and whether it needs
the lab — a suite that does is run inside :func:`lab_held`. Modules are imported only
when their suite runs.

:data:`STANDALONE` suites have a command line of their own (their own JSON too); the
dispatcher passes the rest of the command line to their ``main``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar, cast

from perf.report import Result
from perf.target import PerfError, Target

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Progress = Callable[[str], None]
S = TypeVar("S", bound="DataclassInstance")


class SuiteModule(Protocol):
    def run(self, args: argparse.Namespace, target: Target, progress: Progress) -> list[Result]:
        """Measure every path of the suite on ``target``."""
        ...


@dataclass(frozen=True, slots=True)
class SuiteSpec:
    """One entry of the registry."""

    module: str
    tools: tuple[str, ...]  # command-line tools, checked before anything starts
    needs_lab: bool  # in lab mode, hold the lab (and bring it up) while it runs

    def load(self) -> SuiteModule:
        return cast(SuiteModule, importlib.import_module(self.module))

    def run(self, args: argparse.Namespace, target: Target, progress: Progress) -> list[Result]:
        module = self.load()
        if not self.needs_lab:
            return module.run(args, target, progress)
        with lab_held(target, progress):
            return module.run(args, target, progress)

    def summary(self, results: Sequence[Result]) -> str:
        """The module's ``summary`` of ``results``, or nothing when it has none."""
        fn: Callable[[Sequence[Result]], str] | None = getattr(self.load(), "summary", None)
        return fn(results) if fn is not None else ""


_TRAFGEN = ("ip", "trafgen", "ethtool", "taskset", "chrt", "nft")

# The order is the order of ``python -m perf all``.
SUITES: dict[str, SuiteSpec] = {
    # CPU per packet, program cost, latency, connections, throughput of each data path
    "dataplane": SuiteSpec("perf.dataplane", (*_TRAFGEN, "sockperf", "iperf3"), needs_lab=True),
    # the inspection path against a naive NFQUEUE consumer
    "nfq": SuiteSpec(
        "perf.nfq", ("ip", "trafgen", "taskset", "iptables-restore", "conntrack"), needs_lab=True
    ),
    # GENEVE two-arm against the plain fast path and a userspace GENEVE handler
    "geneve": SuiteSpec("perf.geneve", _TRAFGEN, needs_lab=True),
    # the AI gateway against a bare aiohttp proxy and LiteLLM
    "ai": SuiteSpec("perf.ai", (), needs_lab=False),
}

STANDALONE: dict[str, str] = {
    "config": "perf.configlatency",  # config change -> applied latency, local and SSM stores
    "semcache": "perf.semcache",  # semantic cache precision / recall on labelled pairs
    "failover": "perf.failover",  # an AZ leader killed on the VPC lab: gap, flows that survive
    "flows": "perf.flows",  # the offloader with 10k-250k NATed flows: agent CPU, delays
    "flowlog": "perf.flowlog",  # flow logs when 10k-250k conntrack entries end at once
}


def settings_for(args: argparse.Namespace, default: S, quick: S) -> S:
    """``quick`` or ``default`` (``--quick``), with whichever of ``--rate`` (the field
    ``rate_pps``), ``--runs`` and ``--seconds`` the command line gave."""
    given = {
        field: value
        for option, field in (("rate", "rate_pps"), ("runs", "runs"), ("seconds", "seconds"))
        if (value := getattr(args, option, None)) is not None
    }
    return dataclasses.replace(quick if args.quick else default, **given)


@contextlib.contextmanager
def lab_held(target: Target, progress: Progress) -> Iterator[None]:
    """In lab mode, the lab held by this run and left as it was found
    (:func:`perf.lab.held`); elsewhere nothing."""
    if not target.lab:
        yield
        return
    from perf.lab import LabError, held

    try:
        with held(progress):
            yield
    except LabError as exc:
        raise PerfError(str(exc)) from exc
