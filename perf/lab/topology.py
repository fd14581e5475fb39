"""Every namespace, link and address of the lab, in one place: one VPC with two
Availability Zones, an internet, and the GWLB simulator's segment.

    cs-ws-a --eth0/inside-- cs-gw-a --outside/to-gw-a--+
                               |mgmt                   +-- cs-inet (198.51.100.10: http,
    root ns --csm-a/csm-b------+                        |   iperf3, sockperf, udp echo)
                               |mgmt                   |
    cs-ws-b --eth0/inside-- cs-gw-b --outside/to-gw-b--+

    cs-ws-g eth0 10.0.100.10 ── ws 10.0.100.1 ────────┐
    cs-gw-a gwlb 172.16.1.2 ── to-gw-a 172.16.1.1 ────┤ cs-gwlb (GWLB simulator,
    cs-gw-b gwlb 172.16.2.2 ── to-gw-b 172.16.2.1 ────┤ GENEVE/6081, MTU 3000)
    cs-inet to-gwlb 203.0.113.17 ── inet 203.0.113.18 ┘

Workloads route 0.0.0.0/0 to their own AZ's gateway; gateways forward and translate
toward ``cs-inet``, which has no route to the VPC, so untranslated traffic cannot come
back. Lab traffic never leaves the namespaces: nothing is bridged to a host interface,
and the management links are point-to-point /30s owned by the lab.

A new part of the lab declares its namespaces and addresses here, as a segment of
:class:`Topology` (like :class:`GwlbSegment`), and lists them in
:attr:`Topology.all_namespaces` so ``spectra lab down`` removes them. Tests and scripts
read addresses from here or from ``spectra lab status --json``, never hard-code them.
"""

from __future__ import annotations

from dataclasses import dataclass

from perf.lab.host import LabError


@dataclass(frozen=True, slots=True)
class Gateway:
    """One AZ: a workload namespace behind a gateway namespace."""

    az: str
    netns: str
    workload_netns: str
    inside_if: str
    inside_cidr: str  # gateway side of the workload subnet
    workload_if: str
    workload_cidr: str
    outside_if: str
    outside_cidr: str  # the gateway's public (EIP-like) address
    inet_if: str  # the cs-inet side of the outside link
    inet_cidr: str
    mgmt_host_if: str
    mgmt_host_cidr: str
    mgmt_if: str
    mgmt_cidr: str

    @property
    def outside_ip(self) -> str:
        return self.outside_cidr.split("/")[0]

    @property
    def inside_ip(self) -> str:
        return self.inside_cidr.split("/")[0]

    @property
    def workload_ip(self) -> str:
        return self.workload_cidr.split("/")[0]

    @property
    def mgmt_ip(self) -> str:
        return self.mgmt_cidr.split("/")[0]


def _gateway(az: str, n: int) -> Gateway:
    return Gateway(
        az=az,
        netns=f"cs-gw-{az}",
        workload_netns=f"cs-ws-{az}",
        inside_if="inside",
        inside_cidr=f"10.0.{n}.1/24",
        workload_if="eth0",
        workload_cidr=f"10.0.{n}.10/24",
        outside_if="outside",
        outside_cidr=f"203.0.113.{8 * (n - 1) + 2}/29",
        inet_if=f"to-gw-{az}",
        inet_cidr=f"203.0.113.{8 * (n - 1) + 1}/29",
        mgmt_host_if=f"csm-{az}",
        mgmt_host_cidr=f"10.255.{n}.1/30",
        mgmt_if="mgmt",
        mgmt_cidr=f"10.255.{n}.2/30",
    )


INET_NS = "cs-inet"
INET_SERVICE_CIDR = "198.51.100.10/32"
INET_SERVICE_IP = INET_SERVICE_CIDR.split("/")[0]


@dataclass(frozen=True, slots=True)
class GwlbTarget:
    """One gateway behind the GWLB simulator, on a link of its own from ``cs-gwlb``."""

    az: str
    netns: str
    gateway_ip: str  # the gateway's address on its gwlb interface
    sim_ip: str  # the simulator's address toward it
    sim_if: str


@dataclass(frozen=True, slots=True)
class GwlbSegment:
    """The GWLB simulator's namespace, its workload, and its links to the gateways and
    to the internet (one-arm: the GWLB forwards returned traffic on, like a VPC)."""

    netns: str
    workload_netns: str
    workload_if: str
    workload_cidr: str  # the simulator's workload subnet
    workload_ip: str
    ws_if: str  # the simulator's side of the workload link
    ws_ip: str
    inet_if: str  # the simulator's side of the internet link
    inet_ip: str
    inet_peer_if: str  # the cs-inet side
    inet_peer_ip: str
    gateway_if: str  # the new interface in each gateway namespace
    mtu: int  # below veth's native-XDP MTU limit (one page per frame)
    targets: tuple[GwlbTarget, ...]

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.netns, self.workload_netns)

    def target(self, az: str) -> GwlbTarget:
        for t in self.targets:
            if t.az == az:
                return t
        raise LabError(f"unknown AZ {az!r}")


def _gwlb(gateways: tuple[Gateway, ...]) -> GwlbSegment:
    return GwlbSegment(
        netns="cs-gwlb",
        workload_netns="cs-ws-g",
        workload_if="eth0",
        workload_cidr="10.0.100.0/24",
        workload_ip="10.0.100.10",
        ws_if="ws",
        ws_ip="10.0.100.1",
        inet_if="inet",
        inet_ip="203.0.113.18",
        inet_peer_if="to-gwlb",
        inet_peer_ip="203.0.113.17",
        gateway_if="gwlb",
        mtu=3000,
        targets=tuple(
            GwlbTarget(gw.az, gw.netns, f"172.16.{n}.2", f"172.16.{n}.1", f"to-gw-{gw.az}")
            for n, gw in enumerate(gateways, start=1)
        ),
    )


@dataclass(frozen=True, slots=True)
class Topology:
    gateways: tuple[Gateway, ...]
    inet_netns: str
    inet_service_cidr: str
    gwlb: GwlbSegment

    @property
    def namespaces(self) -> tuple[str, ...]:
        """The namespaces ``spectra lab up`` builds."""
        names = [self.inet_netns]
        for gw in self.gateways:
            names += [gw.netns, gw.workload_netns]
        return tuple(names)

    @property
    def all_namespaces(self) -> tuple[str, ...]:
        """Those and the namespaces of every segment added on demand."""
        return (*self.namespaces, *self.gwlb.namespaces)

    def gateway(self, az: str) -> Gateway:
        for gw in self.gateways:
            if gw.az == az:
                return gw
        raise LabError(f"unknown AZ {az!r}; the lab has {[g.az for g in self.gateways]}")


_GATEWAYS = (_gateway("a", 1), _gateway("b", 2))
TOPOLOGY = Topology(
    gateways=_GATEWAYS,
    inet_netns=INET_NS,
    inet_service_cidr=INET_SERVICE_CIDR,
    gwlb=_gwlb(_GATEWAYS),
)
