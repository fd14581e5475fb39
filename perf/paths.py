"""The data paths compared in one run, each with a set-up and a tear-down that leaves
the gateway as it was.

``kernel_forward``: plain IP forwarding.  ``kernel_masquerade``: forwarding + an nft
masquerade rule (the NAT-instance baseline: fck-nat, alterNAT).  ``xdp_fastpath``: the
product's ``xdp_gateway`` with the flow installed (sNAT rewrite + redirect) on top of
the masquerade rule, as the product runs.  ``xdp_drop``: ``xdp_drop_all`` on the
gateway's ingress, the floor.  ``xdp_redirect_only``: a program that only sets the MACs
and redirects (perf/redirect_only.bpf.c), the floor of any XDP forwarder.
Destination NAT (a port forward, a load-balancer listener): ``kernel_dnat`` is
forwarding + an nft ``dnat`` rule from an address and port of the gateway to the
service; ``xdp_fastpath_dnat`` the same rule with ``xdp_gateway`` and the flow
installed as the offloader installs a forwarded flow (destination address and port
rewritten + redirect).  The NFQUEUE
inspection path has its own suite (``perf/nfq.py``), and so has the GENEVE path
(``perf/geneve.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from perf.bpf import Programs
from perf.method import Tuning
from perf.target import Host, PerfError, Target

IPPROTO_TCP = 6
IPPROTO_UDP = 17
NFT_TABLE = "spectra_perf"

BULK_TCP_IN_KERNEL = "xdp_fastpath_bulk_tcp_in_kernel"
REDIRECT_ONLY = "xdp_redirect_only"
KERNEL_DNAT = "kernel_dnat"
FASTPATH_DNAT = "xdp_fastpath_dnat"
DNAT_TABLE = "spectra_perf_dnat"
DNAT_PORT = 8053  # the forwarded port on the gateway; the service's is the flow's dport


def nft_dnat(listen: str, port: int, to: str, to_port: int) -> str:
    return (
        f"table ip {DNAT_TABLE} {{\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        f"    ip daddr {listen} udp dport {port} dnat to {to}:{to_port}\n"
        "  }\n"
        "}\n"
    )


def nft_masquerade(egress_dev: str) -> str:
    return (
        f"table ip {NFT_TABLE} {{\n"
        "  chain postrouting {\n"
        "    type nat hook postrouting priority srcnat; policy accept;\n"
        f'    oifname "{egress_dev}" masquerade\n'
        "  }\n"
        "}\n"
    )


@dataclass(frozen=True, slots=True)
class Flow:
    """A 5-tuple the XDP path offloads in both directions (the masquerade keeps ports)."""

    proto: int
    sport: int
    dport: int


@dataclass
class Gateway:
    """Set-up helpers over one target; every change is undone by :meth:`cleanup`."""

    target: Target
    tuning: Tuning
    programs: Programs
    _nft: bool = False
    _neigh: bool = False
    _macs: dict[tuple[Host, str], str] = field(default_factory=dict)

    def mac(self, host: Host, dev: str) -> str:
        if (host, dev) not in self._macs:
            self._macs[(host, dev)] = host.read(f"/sys/class/net/{dev}/address").strip()
        return self._macs[(host, dev)]

    def static_neighbour(self) -> None:
        """The sink drops everything early, ARP included: give the gateway the next
        hop's MAC so the kernel paths can forward at all."""
        t = self.target
        mac = self.mac(t.sink, t.sink_dev) if not t.sink.ssh else None
        if mac is None:
            return  # a real next hop answers ARP itself
        t.gateway.run(
            "ip",
            "neigh",
            "replace",
            t.next_hop_ip,
            "lladdr",
            mac,
            "dev",
            t.egress_dev,
            "nud",
            "permanent",
        )
        self._neigh = True

    def masquerade(self, on: bool) -> None:
        t = self.target
        if on and not self._nft:
            t.gateway.run("sh", "-c", f"printf '%s' '{nft_masquerade(t.egress_dev)}' | nft -f -")
            self._nft = True
        elif not on and self._nft:
            t.gateway.run("nft", "delete", "table", "ip", NFT_TABLE, check=False)
            self._nft = False

    def ingress_address(self) -> str:
        """The gateway's IPv4 address on its ingress interface (what a port forward
        or a load-balancer listener there listens on)."""
        t = self.target
        out = t.gateway.run("ip", "-4", "-o", "addr", "show", "dev", t.ingress_dev)
        for line in out.splitlines():
            parts = line.split()
            if "inet" in parts:
                return parts[parts.index("inet") + 1].split("/")[0]
        raise PerfError(f"{t.ingress_dev} on {t.gateway} has no IPv4 address")

    def dnat(self, on: bool, flow: Flow) -> None:
        """The port forward ``ingress address:DNAT_PORT -> service:flow.dport``."""
        t = self.target
        if on:
            rules = nft_dnat(self.ingress_address(), DNAT_PORT, t.service_ip, flow.dport)
            t.gateway.run("sh", "-c", f"printf '%s' '{rules}' | nft -f -")
        else:
            t.gateway.run("nft", "delete", "table", "ip", DNAT_TABLE, check=False)

    def install_dnat_flow(self, flow: Flow) -> None:
        """The forwarded flow as the offloader installs its original direction: the
        destination becomes the service's address and port, the source stays."""
        t, p = self.target, self.programs
        p.add_udp_or_tcp_flow(
            flow.proto,
            p.ifindex(t.gateway, t.ingress_dev),
            (t.generator_ip, flow.sport),
            (self.ingress_address(), DNAT_PORT),
            (t.generator_ip, flow.sport),
            (t.service_ip, flow.dport),
            p.ifindex(t.gateway, t.egress_dev),
            (self.mac(t.gateway, t.egress_dev), self.next_hop_mac()),
        )

    def install_flow(self, flow: Flow, *, reverse: bool) -> None:
        """Offload ``flow`` from the generator to the service (and back if ``reverse``)."""
        t, p = self.target, self.programs
        ingress = p.ifindex(t.gateway, t.ingress_dev)
        egress = p.ifindex(t.gateway, t.egress_dev)
        p.add_udp_or_tcp_flow(
            flow.proto,
            ingress,
            (t.generator_ip, flow.sport),
            (t.service_ip, flow.dport),
            (t.public_ip, flow.sport),
            (t.service_ip, flow.dport),
            egress,
            (self.mac(t.gateway, t.egress_dev), self.next_hop_mac()),
        )
        if reverse:
            p.add_udp_or_tcp_flow(
                flow.proto,
                egress,
                (t.service_ip, flow.dport),
                (t.public_ip, flow.sport),
                (t.service_ip, flow.dport),
                (t.generator_ip, flow.sport),
                ingress,
                (self.mac(t.gateway, t.ingress_dev), self.mac(t.generator, t.generator_dev)),
            )

    def next_hop_mac(self) -> str:
        t = self.target
        if not t.sink.ssh:
            return self.mac(t.sink, t.sink_dev)
        out = t.gateway.run("ip", "neigh", "show", t.next_hop_ip, "dev", t.egress_dev)
        parts = out.split()
        if "lladdr" not in parts:
            raise PerfError(f"no neighbour entry for next hop {t.next_hop_ip}: ping it first")
        return parts[parts.index("lladdr") + 1]

    def cleanup(self) -> None:
        self.programs.detach_all()
        with contextlib.suppress(Exception):
            self.programs.clear_flows()
        self.masquerade(False)
        self.target.gateway.run("nft", "delete", "table", "ip", DNAT_TABLE, check=False)
        if self._neigh:
            self.target.gateway.run(
                "ip",
                "neigh",
                "del",
                self.target.next_hop_ip,
                "dev",
                self.target.egress_dev,
                check=False,
            )
            self._neigh = False


S = TypeVar("S")


class SuiteBase(Generic[S]):
    """What a data-path suite holds: its target, settings and progress callback, the
    compiled programs, the method's tuning and the gateway set-up helpers."""

    def __init__(self, target: Target, settings: S, progress: Callable[[str], None]) -> None:
        self.target = target
        self.settings = settings
        self.progress = progress
        self.programs = Programs()
        self.tuning = Tuning(target)
        self.gw = Gateway(target, self.tuning, self.programs)


# ---- packet-rate phase (the sink drops with XDP) ------------------------------------


def setup_rate_path(gw: Gateway, path: str, flow: Flow) -> None:
    t = gw.target
    if path == "kernel_forward":
        gw.masquerade(False)
    elif path == "kernel_masquerade":
        gw.masquerade(True)
    elif path == "xdp_fastpath":
        gw.masquerade(True)
        gw.programs.attach(t.gateway, t.ingress_dev, "xdp_gateway")
        gw.programs.set_tx_port(t.gateway, t.egress_dev)
        gw.install_flow(flow, reverse=False)
    elif path == "xdp_drop":
        gw.masquerade(False)
        gw.programs.attach(t.gateway, t.ingress_dev, "xdp_drop_all")
    elif path == REDIRECT_ONLY:
        gw.masquerade(False)
        macs = (gw.mac(t.gateway, t.egress_dev), gw.next_hop_mac())
        gw.programs.attach_redirect_only(t.gateway, t.ingress_dev, t.egress_dev, macs)
    elif path == KERNEL_DNAT:
        gw.dnat(True, flow)
    elif path == FASTPATH_DNAT:
        gw.dnat(True, flow)
        gw.programs.attach(t.gateway, t.ingress_dev, "xdp_gateway")
        gw.programs.set_tx_port(t.gateway, t.egress_dev)
        gw.install_dnat_flow(flow)
    else:
        raise PerfError(f"unknown path {path!r}")
    gw.tuning.pin()


def teardown_rate_path(gw: Gateway, path: str) -> None:
    t = gw.target
    if path in ("xdp_fastpath", "xdp_drop", REDIRECT_ONLY, FASTPATH_DNAT):
        gw.programs.detach(t.gateway, t.ingress_dev)
        with contextlib.suppress(Exception):
            gw.programs.clear_flows()
    if path in (KERNEL_DNAT, FASTPATH_DNAT):
        gw.dnat(False, Flow(IPPROTO_UDP, 0, 0))
    gw.masquerade(False)


# ---- request/response phase (the sink answers) --------------------------------------


def setup_rr_path(gw: Gateway, path: str, flows: list[Flow]) -> None:
    """``kernel_masquerade``, ``xdp_fastpath`` (XDP on both gateway interfaces, the
    given flows offloaded both ways, XDP_PASS on both veth peers so native redirects
    into them are delivered) or ``BULK_TCP_IN_KERNEL`` (the same without TCP flows)."""
    t = gw.target
    gw.masquerade(True)
    if path == BULK_TCP_IN_KERNEL:
        # interfaces.bulk_tcp = "kernel": XDP attached, the bulk TCP flow handed back
        # to the kernel path, everything else offloaded.
        path, flows = "xdp_fastpath", [f for f in flows if f.proto != IPPROTO_TCP]
    if path == "xdp_fastpath":
        p = gw.programs
        p.attach(t.gateway, t.ingress_dev, "xdp_gateway")
        p.attach(t.gateway, t.egress_dev, "xdp_gateway")
        if t.lab:
            p.attach(t.sink, t.sink_dev, "xdp_pass_peer")
            p.attach(t.generator, t.generator_dev, "xdp_pass_peer")
        for flow in flows:
            gw.install_flow(flow, reverse=True)
    elif path != "kernel_masquerade":
        raise PerfError(f"path {path!r} has no request/response set-up")
    gw.tuning.pin(sink=False)


def teardown_rr_path(gw: Gateway, path: str) -> None:
    gw.programs.detach_all()
    with contextlib.suppress(Exception):
        gw.programs.clear_flows()
    gw.masquerade(False)
