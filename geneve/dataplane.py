"""The GWLB data plane of one gateway instance: compile (or adopt) and pin the
programs of ``geneve/bpf/gwlb.bpf.c``, attach them to the GWLB-facing interface,
configure them, read their counters.

    gwlb = Gwlb("gw-a", "gwlb", mode="two-arm", idle_timeout=350.0)
    plan = gwlb.load().attach()       # AttachPlan: native / generic XDP, or tc ingress
    gwlb.counters()                   # {"DECAP": {"packets": .., "bytes": ..}, ...}
    gwlb.detach(); gwlb.close()       # pins stay: forwarding survives the agent

``load()`` adopts existing pins without touching their configuration (a reader such as
``spectra status`` or a test, possibly in another network namespace, must not rewrite
the live config); ``attach()`` and ``configure()`` write it.

Pins live under ``/sys/fs/bpf/spectra/<instance>/gwlb/{progs,maps}/``.  Modes (RFC 8926
transport, AWS GWLB contract: https://docs.aws.amazon.com/elasticloadbalancing/latest/gateway/):

* ``two-arm``: decap -> kernel (conntrack, masquerade out of the outside interface);
  replies come back reverse-NATed, are routed to the GWLB interface and re-encapsulated
  at tc egress with the stored header.  With :meth:`Gwlb.link_fastpath` (XDP decap
  only) flows the offloader installed skip the kernel both ways: ``xdp_gwlb`` tail
  calls ``xdp_gateway`` on the inner packet, and ``xdp_gateway`` re-encapsulates
  flagged replies with the header stored here.
* ``one-arm``: decap -> kernel filtering / inspection -> routed back out of the GWLB
  interface (policy route ``iif <gwlb>``) -> re-encapsulated at tc egress, no NAT.
* ``one-arm-reflect``: XDP_TX straight back with swapped outer headers (no inspection).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from geneve import attach as hooks
from geneve.attach import DECAP_HOOKS, AttachPlan, DecapHook
from geneve.errors import GwlbError
from geneve.maps import GWLB_F_REFLECT, GWLB_F_SOURCES, GwlbMaps
from xdp import libbpf, loader

if TYPE_CHECKING:
    from xdp import Dataplane

log = logging.getLogger("spectra.geneve")

BPF_DIR = Path(__file__).resolve().parent / "bpf"
SOURCE = BPF_DIR / "gwlb.bpf.c"
# What the pins of these programs are built from (see xdp.loader.layout_id).
LAYOUT_SOURCES = (BPF_DIR, loader.INCLUDE_DIR / "spectra")
XDP_PROGRAMS = ("xdp_gwlb", "xdp_gwlb_pass_peer")
TC_PROGRAMS = ("tc_gwlb_encap", "tc_gwlb_decap")
MAPS = ("gwlb_flows", "gwlb_stats", "gwlb_config", "gwlb_fastpath", "gwlb_sources")
MAX_OPTIONS = 8  # GWLB_MAX_OPTS in gwlb_maps.h
DEFAULT_IDLE_TIMEOUT = 350.0  # seconds, GWLB's own flow idle timeout
Mode = Literal["two-arm", "one-arm", "one-arm-reflect"]
MODES: tuple[Mode, ...] = ("two-arm", "one-arm", "one-arm-reflect")


@dataclass(frozen=True, slots=True)
class GwlbBuild:
    """Compile-time tunables of ``gwlb_maps.h``; each field is one ``-D`` flag."""

    flow_table_size: int = field(default=65536, metadata={"define": "GWLB_FLOW_TABLE_SIZE"})

    def __post_init__(self) -> None:
        if not isinstance(self.flow_table_size, int) or self.flow_table_size <= 0:
            raise ValueError(
                f"GwlbBuild.flow_table_size={self.flow_table_size!r}: expected a positive integer"
            )

    def cflags(self) -> list[str]:
        return [
            f"-I{BPF_DIR}",
            f"-I{loader.INCLUDE_DIR}",  # headers shared with the fast path
            "-Wno-compare-distinct-pointer-types",
            f"-DGWLB_FLOW_TABLE_SIZE={self.flow_table_size}",
        ]


class PacketCounter(TypedDict):
    packets: int
    bytes: int


@dataclass(slots=True)
class _Objects:
    prog_fds: dict[str, int]
    map_fds: dict[str, int]
    owner: Any = None  # the bcc BPF object when compiled here (it owns the fds)


_compiled: dict[GwlbBuild, _Objects] = {}


def compile_programs(build: GwlbBuild, *, fresh: bool = False) -> _Objects:
    """Compile once per process and build (``fresh``: a new set of maps)."""
    if not fresh and build in _compiled:
        return _compiled[build]
    from bcc import BPF

    log.info("compiling %s with %s", SOURCE.name, build)
    bpf, prog_fds = loader.compile_source(SOURCE, build.cflags(), XDP_PROGRAMS)
    for name in TC_PROGRAMS:
        try:
            prog_fds[name] = int(bpf.load_func(name.encode(), BPF.SCHED_CLS).fd)
        except Exception as exc:
            bpf.cleanup()
            raise loader.VerifierError(name, str(exc)) from exc
    map_fds = {name: int(bpf.get_table(name.encode()).map_fd) for name in MAPS}
    objects = _Objects(prog_fds, map_fds, bpf)
    if not fresh:
        _compiled[build] = objects
    return objects


def pin_dir_for(instance: str, root: Path = loader.DEFAULT_PIN_ROOT) -> Path:
    return loader.pin_dir_for(instance, root) / "gwlb"


class Gwlb:
    """GENEVE decap/re-encap for one instance on one GWLB-facing interface."""

    def __init__(
        self,
        instance: str,
        iface: str,
        mode: Mode = "two-arm",
        health_port: int = 8081,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        *,
        allowed_sources: Sequence[IPv4Network] = (),
        build: GwlbBuild | None = None,
        pin_root: Path = loader.DEFAULT_PIN_ROOT,
    ) -> None:
        if mode not in MODES:
            raise GwlbError(f"mode={mode!r}: expected one of {MODES}")
        if not 0 < idle_timeout <= 86400:
            raise GwlbError(f"idle_timeout={idle_timeout!r}: expected 0 < seconds <= 86400")
        if not 0 < health_port < 65536:
            raise GwlbError(f"health_port={health_port!r}: expected 1..65535")
        self.instance = instance
        self.iface = iface
        self.mode: Mode = mode
        self.health_port = health_port
        self.idle_timeout = idle_timeout
        self.allowed_sources = tuple(allowed_sources)
        self.build = build or GwlbBuild()
        self.pin_dir = pin_dir_for(instance, pin_root)
        self._objects: _Objects | None = None
        self._maps: GwlbMaps | None = None
        self.plan: AttachPlan | None = None

    # -- lifecycle -------------------------------------------------------------------

    def _pinned(self) -> bool:
        names = [("progs", n) for n in (*XDP_PROGRAMS, *TC_PROGRAMS)]
        names += [("maps", n) for n in MAPS]
        pinned = all((self.pin_dir / sub / n).exists() for sub, n in names)
        return pinned and loader.has_layout(self.pin_dir, LAYOUT_SOURCES)

    def load(self) -> Gwlb:
        """Adopt the instance's pins if present (their configuration untouched), else
        compile, pin and configure."""
        if self._objects is not None:
            return self
        adopted = self._pinned()
        if not adopted:
            self._remove_pins()  # a partial or older set: replace it whole
        if adopted:
            progs = {
                n: libbpf.obj_get(str(self.pin_dir / "progs" / n))
                for n in (*XDP_PROGRAMS, *TC_PROGRAMS)
            }
            maps = {n: libbpf.obj_get(str(self.pin_dir / "maps" / n)) for n in MAPS}
            self._objects = _Objects(progs, maps, None)
            log.info("adopted GWLB pins under %s", self.pin_dir)
        else:
            objects = compile_programs(self.build)
            if any(o is objects for o in _pinned_objects.values()):
                objects = compile_programs(self.build, fresh=True)
            for sub, fds in (("progs", objects.prog_fds), ("maps", objects.map_fds)):
                (self.pin_dir / sub).mkdir(parents=True, exist_ok=True)
                for name, fd in fds.items():
                    libbpf.obj_pin(fd, str(self.pin_dir / sub / name))
            loader.mark_layout(self.pin_dir, LAYOUT_SOURCES)
            _pinned_objects[self.pin_dir] = objects
            self._objects = objects
            log.info("pinned GWLB programs and maps under %s", self.pin_dir)
        self._maps = GwlbMaps(self._objects.map_fds, owned=self._objects.owner is None)
        if not adopted:
            self.configure(local_addr=_first_ipv4(self.iface))
        return self

    @property
    def maps(self) -> GwlbMaps:
        if self._maps is None:
            raise GwlbError(f"{self.instance}: call load() first")
        return self._maps

    def program_fd(self, name: str) -> int:
        if self._objects is None:
            raise GwlbError(f"{self.instance}: call load() first")
        return self._objects.prog_fds[name]

    def configure(self, local_addr: str | None = None) -> None:
        """Write mode, idle timeout, allowed GWLB sources and the appliance's own
        GWLB-side address (by default the interface's first IPv4 address in this
        network namespace)."""
        flags = GWLB_F_REFLECT if self.mode == "one-arm-reflect" else 0
        if self.allowed_sources:
            self.maps.set_sources(self.allowed_sources)  # before the flag enforces them
            flags |= GWLB_F_SOURCES
        if local_addr is None:
            if not _has_interface(self.iface):
                raise GwlbError(
                    f"{self.instance}: interface {self.iface!r} is not in this network "
                    "namespace; configure from the gateway's namespace or pass local_addr"
                )
            local_addr = _first_ipv4(self.iface)
        self.maps.set_config(int(self.idle_timeout * 1e9), local_addr, flags)
        if not self.allowed_sources:
            self.maps.set_sources(())  # after the flag stopped enforcing them

    def attach(self, hook: DecapHook = "auto") -> AttachPlan:
        """Attach decap (XDP, or tc ingress where XDP cannot run or ``hook`` is "tc")
        and re-encap (tc egress) to the interface; returns what is in use and why.
        ``hook="xdp"`` refuses tc: GwlbError says why XDP cannot run."""
        if hook not in DECAP_HOOKS:
            raise GwlbError(f"hook={hook!r}: expected one of {DECAP_HOOKS}")
        ifindex = loader.ifindex_of(self.iface)
        mtu, driver = hooks.interface_facts(self.iface)
        decided = hooks.plan(self.iface, mtu, driver, requested=hook)
        if decided.hook == "tc" and hook == "xdp":
            raise GwlbError(f"{self.iface}: {decided.reason}; decap_hook is xdp (tc refused)")
        self.configure()
        if decided.hook == "tc":
            loader.detach(ifindex)
            hooks.tc_attach(
                ifindex, self.program_fd("tc_gwlb_decap"), "tc_gwlb_decap", hooks.TC_INGRESS_PARENT
            )
            self.plan = decided
        else:
            try:
                mode = loader.attach(ifindex, self.program_fd("xdp_gwlb"), "auto")
            except loader.LoaderError as exc:
                raise GwlbError(f"{self.iface}: cannot attach xdp_gwlb: {exc}") from exc
            hooks.tc_detach_filter(ifindex, hooks.TC_INGRESS_PARENT)
            self.plan = hooks.plan(self.iface, mtu, driver, native_ok=mode == "native")
        hooks.tc_attach(ifindex, self.program_fd("tc_gwlb_encap"), "tc_gwlb_encap")
        log.info("GWLB %s on %s: %s (%s)", self.mode, self.iface, self.plan.hook, self.plan.reason)
        return self.plan

    def link_fastpath(self, dataplane: Dataplane) -> None:
        """Put established two-arm flows on ``dataplane``'s fast path (the instance's
        ``xdp.Dataplane``): the return side first (flagged entries find the headers),
        then the forward tail call.  Only meaningful with decap in XDP."""
        dataplane.link_gwlb(
            self.maps.fds["gwlb_flows"],
            self.maps.fds["gwlb_config"],
            loader.ifindex_of(self.iface),
        )
        self.maps.set_fastpath(dataplane.program_fd("xdp_gateway"))
        log.info("GWLB %s on %s: two-arm flows may take the fast path", self.mode, self.iface)

    def unlink_fastpath(self, dataplane: Dataplane | None = None) -> None:
        """Every GWLB flow back to the kernel path (tc re-encapsulates its replies)."""
        self.maps.set_fastpath(None)
        if dataplane is not None:
            dataplane.unlink_gwlb()

    def attached_hook(self) -> hooks.Hook | None:
        """Where decap runs on the interface now, read from the kernel: "native" /
        "generic" (an XDP program), "tc" (clsact ingress filter), or None."""
        try:
            ifindex = loader.ifindex_of(self.iface)
        except loader.LoaderError:
            return None
        mode = loader.attached_mode(ifindex)
        if mode in ("native", "generic"):
            return "native" if mode == "native" else "generic"
        return "tc" if hooks.tc_filter_present(ifindex, hooks.TC_INGRESS_PARENT) else None

    def _remove_pins(self) -> None:
        loader.unpin(self.pin_dir)  # of this build or another

    def detach(self) -> None:
        with contextlib.suppress(loader.LoaderError):
            ifindex = loader.ifindex_of(self.iface)
            loader.detach(ifindex)
            hooks.tc_detach(ifindex)

    def close(self) -> None:
        """Drop this process's handles; pinned programs and maps keep working."""
        if self._maps is not None:
            self._maps.close()
        self._maps = None
        self._objects = None

    def destroy(self) -> None:
        """Detach, remove the pins, close."""
        self.detach()
        self._remove_pins()
        for directory in (self.pin_dir, self.pin_dir.parent):  # <instance>/gwlb, <instance>
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty: the XDP pins may share <instance>
        objects = _pinned_objects.pop(self.pin_dir, None)
        self.close()
        if objects is not None and objects.owner is not None:
            for build, cached in list(_compiled.items()):
                if cached is objects:
                    del _compiled[build]
            objects.owner.cleanup()

    # -- state -------------------------------------------------------------------------

    def counters(self) -> dict[str, PacketCounter]:
        return {
            reason.name: PacketCounter(packets=p, bytes=b)
            for reason, (p, b) in self.maps.counters().items()
        }

    def drops(self) -> dict[str, int]:
        """Named drop counters with a nonzero count."""
        return {r.name: p for r, (p, _) in self.maps.counters().items() if r.is_drop and p}

    def status(self) -> dict[str, Any]:
        return {
            "instance": self.instance,
            "iface": self.iface,
            "mode": self.mode,
            "hook": self.plan.hook if self.plan else self.attached_hook(),
            "hook_reason": self.plan.reason if self.plan else None,
            "idle_timeout": self.idle_timeout,
            "health_port": self.health_port,
            "flows": len(self.maps.flows()),
            "fast_path": self.maps.fastpath_linked(),
            "drops": self.drops(),
        }


_pinned_objects: dict[Path, _Objects] = {}


def _has_interface(ifname: str) -> bool:
    try:
        socket.if_nametoindex(ifname)
    except OSError:
        return False
    return True


def _first_ipv4(ifname: str) -> str | None:
    """The first IPv4 address of ``ifname`` in this netns (None when it has none)."""
    from pyroute2 import IPRoute

    try:
        index = socket.if_nametoindex(ifname)
    except OSError:
        return None
    with IPRoute() as ipr:
        for addr in ipr.get_addr(index=index, family=socket.AF_INET):
            value = addr.get_attr("IFA_ADDRESS")
            if value:
                return str(value)
    return None
