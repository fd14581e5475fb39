"""The public facade of the XDP data plane: one :class:`Dataplane` per gateway instance.

It compiles (or adopts) and pins the programs and maps, attaches them to interfaces,
and gives typed access to the flow table, the deny list and the counters.  The agent
and the lab reach the maps only through this class.  Beside it they use the records it
takes (:mod:`xdp.records`), the loader's attach and pin helpers (:mod:`xdp.loader`,
with program ids from :mod:`xdp.libbpf`) and the offloader (:mod:`xdp.offload`, which
fills the flow table through this class).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import TypedDict

from xdp import libbpf, loader
from xdp.deny_samples import DenySample, DenySampleReader, budget_counters
from xdp.denylist import DenyList, DenyTables
from xdp.loader import AttachMode, BuildOptions, LoadedObjects
from xdp.maps import (
    DENY_GENERATIONS,
    BpfMap,
    DenyLpmKeyC,
    DenyPortKeyC,
    DevMap,
    FlowTable,
    PerCpuCounters,
    SpectraConfigC,
    Stats,
)
from xdp.records import DenyRule, FlowEntry, FlowKey

log = logging.getLogger("spectra.xdp")


class PacketCounter(TypedDict):
    packets: int
    bytes: int


class Counters(TypedDict):
    reasons: dict[str, PacketCounter]
    deny_rules: dict[int, PacketCounter]
    flows: int
    flow_capacity: int


class Dataplane:
    """Programs + maps of one instance, pinned under ``<pin_root>/<instance>``."""

    def __init__(self, instance: str, pin_dir: Path, objects: LoadedObjects) -> None:
        self.instance = instance
        self.pin_dir = pin_dir
        self.objects = objects
        caps = loader.map_capacities(objects.map_fds)
        fds = objects.map_fds
        owned = objects.owner is None  # adopted fds are ours; bcc owns compiled ones
        self.flow_table = FlowTable(fds["flows"], caps["flows"], owned=owned)
        self.tx_ports = DevMap(fds["tx_ports"], caps["tx_ports"], owned=owned)
        self.stats = Stats(fds["stats"], owned=owned)
        self.deny = DenyList(
            DenyTables(
                config=BpfMap(fds["config"], ctypes.c_uint32, SpectraConfigC, owned=owned),
                src=BpfMap(fds["deny_src"], DenyLpmKeyC, ctypes.c_uint64, owned=owned),
                dst=BpfMap(fds["deny_dst"], DenyLpmKeyC, ctypes.c_uint64, owned=owned),
                proto=BpfMap(fds["deny_proto"], ctypes.c_uint32, ctypes.c_uint64, owned=owned),
                rule_proto=BpfMap(
                    fds["deny_rule_proto"], ctypes.c_uint32, ctypes.c_uint64, owned=owned
                ),
                port_any=BpfMap(
                    fds["deny_port_any"], ctypes.c_uint32, ctypes.c_uint64, owned=owned
                ),
                port=BpfMap(fds["deny_port"], DenyPortKeyC, ctypes.c_uint64, owned=owned),
                local=BpfMap(fds["local_addrs"], ctypes.c_uint32, ctypes.c_uint8, owned=owned),
                rule_stats=PerCpuCounters(fds["deny_stats"], caps["deny_stats"], owned=owned),
            ),
            port_table_size=caps["deny_port"],
            lpm_size=caps["deny_src"],
            max_rules=caps["deny_stats"] // DENY_GENERATIONS,
        )
        # GWLB two-arm link: slot 0 of each holds a GWLB map (an fd going in, an id out).
        self.gwlb_links = {
            name: BpfMap(fds[name], ctypes.c_uint32, ctypes.c_uint32, owned=owned)
            for name in ("gwlb_flows_link", "gwlb_config_link")
        }
        self._config = self.deny.t.config
        self._attached: dict[int, str] = {}

    # ---- lifecycle -------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        instance: str,
        opts: BuildOptions = loader.DEFAULT_OPTIONS,
        *,
        pin_root: Path = loader.DEFAULT_PIN_ROOT,
    ) -> Dataplane:
        """Adopt the instance's pins if this build made them, else compile (once per
        process and ``opts``) and pin, replacing pins of another build."""
        pin_dir = loader.pin_dir_for(instance, pin_root)
        if loader.is_pinned(pin_dir):
            dataplane = cls.adopt(instance, pin_root=pin_root)
            if dataplane.flow_table.capacity != opts.flow_table_size:
                log.warning(
                    "%s: pinned flow table holds %d entries, options ask for %d; "
                    "destroy() and load again to resize",
                    instance,
                    dataplane.flow_table.capacity,
                    opts.flow_table_size,
                )
            return dataplane
        if pin_dir.exists():
            log.warning(
                "%s: pins of another build (or an incomplete set): replacing them; offloaded "
                "flows continue on the kernel path and are offloaded again",
                pin_dir,
            )
            loader.unpin(pin_dir)
        objects = loader.compile_programs(opts)
        if objects.pinned_at is not None and objects.pinned_at != pin_dir:
            # The cached compile already serves another instance: give this one its own maps.
            objects = loader.compile_programs(opts, fresh=True)
        loader.pin(objects, pin_dir)
        return cls(instance, pin_dir, objects)

    @classmethod
    def adopt(cls, instance: str, *, pin_root: Path = loader.DEFAULT_PIN_ROOT) -> Dataplane:
        """Reopen an instance from its pins (agent restart); no compiler needed."""
        pin_dir = loader.pin_dir_for(instance, pin_root)
        return cls(instance, pin_dir, loader.adopt(pin_dir))

    def close(self) -> None:
        """Drop this process's handles; pinned programs and maps keep forwarding."""
        loader.release(self.objects)

    def unpin(self) -> None:
        """Remove the pins; attached programs keep running until detached."""
        loader.unpin(self.pin_dir)
        self.objects.pinned_at = None

    def destroy(self) -> None:
        """Detach from every interface this object attached to, unpin, close."""
        for ifindex in list(self._attached):
            self.detach(ifindex)
        self.unpin()
        self.close()

    # ---- interfaces --------------------------------------------------------------------

    def program_fd(self, name: str = "xdp_gateway") -> int:
        return self.objects.prog_fds[name]

    def attach(
        self, ifname: str | int, peer: str | int | None = None, mode: AttachMode = "auto"
    ) -> str:
        """Attach ``xdp_gateway`` to ``ifname`` and register it as an egress port;
        with ``peer`` (a veth peer in this netns) attach ``xdp_pass_peer`` there so
        native redirects into the veth are delivered.  Returns the mode in use."""
        ifindex = loader.ifindex_of(ifname)
        in_use = loader.attach(ifindex, self.program_fd("xdp_gateway"), mode)
        self._attached[ifindex] = in_use
        self.set_tx_port(ifindex)
        if peer is not None:
            peer_index = loader.ifindex_of(peer)
            self._attached[peer_index] = loader.attach(
                peer_index, self.program_fd("xdp_pass_peer"), mode
            )
        return in_use

    def detach(self, ifname: str | int) -> None:
        ifindex = loader.ifindex_of(ifname)
        loader.detach(ifindex)
        self._attached.pop(ifindex, None)

    def set_tx_port(self, ifindex: int) -> None:
        """Allow redirects out of ``ifindex`` (flow entries name it as egress_ifindex)."""
        self.tx_ports.add(ifindex)

    # ---- GWLB two-arm ------------------------------------------------------------------

    def link_gwlb(self, flows_fd: int, config_fd: int, ifindex: int) -> None:
        """Let return entries flagged ``FLOW_F_GWLB`` re-encapsulate with the headers in
        the GWLB programs' ``gwlb_flows`` (idle timeout from ``gwlb_config``) and be
        redirected to ``ifindex``, the GWLB interface (called by
        ``geneve.Gwlb.link_fastpath``)."""
        zero = ctypes.c_uint32(0)
        self.gwlb_links["gwlb_config_link"].put(zero, ctypes.c_uint32(config_fd))
        self.gwlb_links["gwlb_flows_link"].put(zero, ctypes.c_uint32(flows_fd))
        self.set_tx_port(ifindex)
        self._set_gwlb_ifindex(ifindex)

    def unlink_gwlb(self) -> None:
        """Back to no GWLB fast path: flagged entries go to the kernel path."""
        self._set_gwlb_ifindex(0)
        for link in self.gwlb_links.values():
            link.delete(ctypes.c_uint32(0))

    def gwlb_ifindex(self) -> int | None:
        """The linked two-arm GWLB interface (the offloader's third port), or None."""
        cfg = self._config.get(ctypes.c_uint32(0))
        linked = self.gwlb_links["gwlb_flows_link"].get(ctypes.c_uint32(0))
        return int(cfg.gwlb_ifindex) if cfg and cfg.gwlb_ifindex and linked else None

    def _set_gwlb_ifindex(self, ifindex: int) -> None:
        cfg = self._config.get(ctypes.c_uint32(0)) or SpectraConfigC()
        cfg.gwlb_ifindex = ifindex
        self._config.put(ctypes.c_uint32(0), cfg)

    # ---- policy and state --------------------------------------------------------------

    def set_deny_rules(self, rules: Sequence[DenyRule]) -> None:
        """Replace the whole deny list atomically (rule id = position in ``rules``)."""
        self.deny.replace(rules)

    def set_deny_scope(self, inside_ifindex: int, local: Sequence[IPv4Address]) -> None:
        """Where the deny list applies: forwarded traffic from ``inside_ifindex`` (and
        the linked GWLB interface), never packets to ``local`` (the gateway's own
        addresses) -- the meaning of the nftables deny rules."""
        self.deny.set_local_addresses(local)
        self.deny.set_inside_ifindex(inside_ifindex)

    def set_deny_sample_rate(self, per_second: int) -> None:
        """Denied packets sampled into the ``deny_samples`` ring buffer per second and
        CPU (0: none; the per-rule counters count every drop either way)."""
        fd = self.objects.map_fds["deny_sample_rate"]
        libbpf.map_update(fd, ctypes.c_uint32(0), ctypes.c_uint32(per_second))

    def deny_sample_reader(self, on_sample: Callable[[DenySample], object]) -> DenySampleReader:
        """A reader of the ``deny_samples`` ring buffer (not started)."""
        return DenySampleReader(self.objects.map_fds["deny_samples"], on_sample)

    def deny_sample_counters(self) -> dict[str, int]:
        return budget_counters(self.objects.map_fds["deny_sample_budget"])

    def add_flow(self, key: FlowKey, entry: FlowEntry) -> None:
        self.flow_table.put(key, entry)

    def add_packed_flows(self, keys: bytes, values: bytes) -> None:
        """Install many flow directions, packed (:mod:`xdp.flowpack`), in one batch
        syscall."""
        self.flow_table.put_packed(keys, values)

    def delete_flow(self, key: FlowKey) -> bool:
        return self.flow_table.delete(key)

    def delete_packed_flow(self, key: bytes) -> bool:
        return self.flow_table.delete_packed(key)

    def flow(self, key: FlowKey) -> FlowEntry | None:
        return self.flow_table.get(key)

    def packed_flow(self, key: bytes) -> FlowEntry | None:
        return self.flow_table.get_packed(key)

    def flow_activity(self, key: bytes) -> tuple[int, int] | None:
        """(last seen ns, flags) of one flow direction by its packed key, or None."""
        return self.flow_table.activity_packed(key)

    def flows(self) -> list[tuple[FlowKey, FlowEntry]]:
        return self.flow_table.items()

    def counters(self) -> Counters:
        reasons = {
            reason.name: PacketCounter(packets=p, bytes=b)
            for reason, (p, b) in self.stats.all().items()
        }
        rules = {
            rule: PacketCounter(packets=p, bytes=b)
            for rule, (p, b) in self.deny.rule_drops().items()
        }
        return Counters(
            reasons=reasons,
            deny_rules=rules,
            flows=len(self.flow_table),
            flow_capacity=self.flow_table.capacity,
        )
