"""The appliance agent: converges one instance to its desired state and keeps it there.

For now the desired state is the kernel baseline (forwarding + nftables masquerade with
the egress guard, exactly what a NAT instance does); the control-plane issue replaces
:class:`AgentSettings` with the versioned config document from the config store, and the
XDP issue adds the fast path. The agent writes its state to ``status.json`` under its
run directory so ``spectra status`` can report it without talking to the process.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute

from control import nftables
from control.fastpath import FastPath, detach_all
from xdp.loader import LoaderError

log = logging.getLogger("spectra.control")

RUN_ROOT = Path("/run/spectra")


class AgentError(RuntimeError):
    """The agent cannot converge the instance."""


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Where the agent runs and what it converges (until the config document exists)."""

    instance: str
    inside_if: str
    outside_if: str
    poll_seconds: float = 1.0
    data_plane: str = "xdp"  # "xdp": kernel path + XDP fast path; "kernel": baseline only
    xdp_mode: str = "auto"  # "auto" (native, else generic), "native", "generic"
    flow_table_size: int = 262144
    offload_seconds: float = 0.2
    idle_seconds: float = 300.0

    def __post_init__(self) -> None:
        if self.data_plane not in DATA_PLANES:
            raise AgentError(f"data_plane={self.data_plane!r}: expected one of {DATA_PLANES}")
        if self.xdp_mode not in XDP_MODES:
            raise AgentError(f"xdp_mode={self.xdp_mode!r}: expected one of {XDP_MODES}")


DATA_PLANES = ("xdp", "kernel")
XDP_MODES = ("auto", "native", "generic")


@dataclass(slots=True)
class AgentState:
    instance: str
    pid: int
    hostname: str
    data_plane: str = "kernel"
    converged: bool = False
    applied_at: float | None = None
    last_error: str | None = None
    outside_addresses: list[str] = field(default_factory=list)
    applies: int = 0
    xdp_modes: dict[str, str] = field(default_factory=dict)
    offload: dict[str, Any] = field(default_factory=dict)


def run_dir(instance: str) -> Path:
    return RUN_ROOT / instance


def read_state(instance: str) -> dict[str, Any] | None:
    path = run_dir(instance) / "status.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return data


def interface_ipv4(ifname: str) -> list[str]:
    """IPv4 addresses of ``ifname`` in the current network namespace."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise AgentError(f"interface {ifname!r} does not exist in this network namespace")
        return [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=found[0], family=2)]


class Agent:
    """Polls the desired state and converges the kernel to it, forever."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.state = AgentState(settings.instance, os.getpid(), socket.gethostname())
        self._stop = False
        self.fast_path: FastPath | None = None

    def converge(self) -> None:
        """Bring the instance to the desired state; a no-op when it is already there."""
        s = self.settings
        interface_ipv4(s.inside_if)
        outside = interface_ipv4(s.outside_if)
        if not outside:
            raise AgentError(f"outside interface {s.outside_if!r} has no IPv4 address")
        if self.state.converged and outside == self.state.outside_addresses:
            if nftables.table_present():
                return
            log.warning("nftables table %s disappeared; re-applying", nftables.TABLE)
        policy = nftables.NatPolicy(s.inside_if, s.outside_if, tuple(outside))
        nftables.apply_ruleset(nftables.render_ruleset(policy))
        if s.data_plane == "xdp":
            if self.fast_path is None:
                self.fast_path = FastPath(s)
            self.state.xdp_modes = self.fast_path.converge()
        else:
            detach_all(s.inside_if, s.outside_if)
            self.state.xdp_modes = {}
        self.state.data_plane = s.data_plane
        self.state.outside_addresses = outside
        self.state.converged = True
        self.state.applied_at = time.time()
        self.state.applies += 1
        log.info("converged %s: kernel baseline, sNAT to %s", s.instance, ",".join(outside))

    def _offload_tick(self) -> None:
        if self.fast_path is None or not self.state.converged:
            return
        try:
            self.state.offload = self.fast_path.sync()
        except OSError as exc:
            log.error("offload sync failed: %s", exc)

    def write_state(self) -> None:
        directory = run_dir(self.settings.instance)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / "status.json.tmp"
        tmp.write_text(json.dumps(asdict(self.state), indent=2))
        tmp.replace(directory / "status.json")

    def stop(self, *_: object) -> None:
        self._stop = True

    def run(self) -> None:
        """Converge every poll interval until SIGTERM/SIGINT; retry failures with backoff.

        The data plane never depends on the agent: stopping it leaves the ruleset (and
        later the pinned XDP programs) in place.
        """
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        backoff = self.settings.poll_seconds
        while not self._stop:
            try:
                self.converge()
                self.state.last_error = None
                backoff = self.settings.poll_seconds
            except (AgentError, nftables.NftError, LoaderError, OSError) as exc:
                self.state.converged = False
                self.state.last_error = str(exc)
                log.error("converge failed, retrying in %.1fs: %s", backoff, exc)
                backoff = min(backoff * 2, 30.0)
            self.write_state()
            deadline = time.monotonic() + backoff
            while not self._stop and time.monotonic() < deadline:
                self._offload_tick()
                time.sleep(self.settings.offload_seconds)
        if self.fast_path is not None:
            self.fast_path.close()
        log.info("agent %s stopped; data plane left in place", self.settings.instance)
