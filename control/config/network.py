"""Sections of the config document that shape the packet path.

``interfaces`` (which NICs, XDP or kernel data plane), ``nat`` (translated source,
port range, conntrack timeouts), ``rules`` (allow / deny), ``inspection`` (which
traffic goes to the NFQUEUE inspector), ``port_forwards`` (dNAT) and ``gwlb``
(GENEVE traffic from a Gateway Load Balancer).  Semantics that
the renderers rely on are stated on each model.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Literal

from pydantic import Field, model_validator

from control.config.ipsets import IpSet, IpSetName
from control.config.issues import Issue, Issues, fail
from control.config.types import IfName, Port, PortProto, PortRange, Proto, Seconds, StrictModel
from xdp.prefixes import Prefix, from_network

ANY = IPv4Network("0.0.0.0/0")


class Interfaces(StrictModel):
    """The inside (workload-facing) and outside (internet-facing) interfaces."""

    inside: IfName
    outside: IfName
    data_plane: Literal["xdp", "kernel"] = Field(
        default="xdp",
        description="xdp: kernel path plus the XDP fast path; kernel: kernel path only",
    )
    xdp_mode: Literal["auto", "native", "generic"] = Field(
        default="auto", description="auto: native where the driver supports it, else generic"
    )
    bulk_tcp: Literal["fast_path", "kernel"] = Field(
        default="fast_path",
        description=(
            "fast_path: bulk TCP stays in XDP (measured best on veth, where XDP_PASS "
            "costs a copy); kernel: TCP flows that sustain full-size segments are "
            "handed back to the kernel path and its GRO (for drivers whose XDP_PASS is "
            "free; measure first)"
        ),
    )


class NatTimeouts(StrictModel):
    """Conntrack timeouts (seconds) the agent sets for translated flows.

    ``tcp_established`` defaults to 350 s, AWS NAT Gateway's idle timeout (a connection
    idle that long is forgotten), so a workload moved behind this gateway sees the same
    behaviour.  ``tcp_transitory`` covers every TCP state between SYN and the end of
    TIME_WAIT (syn_sent, syn_recv, fin_wait, close_wait, last_ack, time_wait).
    """

    tcp_established: Seconds = 350
    tcp_transitory: Seconds = 120
    udp: Seconds = 30
    udp_stream: Seconds = 180
    icmp: Seconds = 30


class NatConntrack(StrictModel):
    """Conntrack table size: ``"auto"`` sizes it from instance memory (see
    :func:`control.steps.sysctl.conntrack_size`); a number overrides."""

    max: Literal["auto"] | Annotated[int, Field(ge=1024, le=1 << 26)] = Field(
        default="auto", description="nf_conntrack_max; auto: MemTotal / 8 KiB, clamped"
    )
    buckets: Literal["auto"] | Annotated[int, Field(ge=1024, le=1 << 26)] = Field(
        default="auto", description="conntrack hash buckets; auto: the same as max"
    )


class Nat(StrictModel):
    """Source NAT out of the outside interface.

    ``outside_addresses`` is ``"interface"`` (masquerade to the interface's address),
    ``"zone"`` (the NAT address of this instance's Availability Zone, ``aws.zones.<az>.
    nat_address``: every instance of the AZ translates to the one address that moves to
    the leader, so a takeover needs no new ruleset and synced flows keep their mapping)
    or the list of addresses to translate to.  Several addresses are chosen per source
    address (``address_selection: source``: a workload keeps one public address) or per
    new connection, round robin (``connection``: as AWS NAT Gateway, every address's
    ports serve one workload, so N addresses carry N times the concurrent connections
    to one destination).
    """

    outside_addresses: Annotated[
        Literal["interface", "zone"] | list[IPv4Address], Field(union_mode="left_to_right")
    ] = "interface"
    address_selection: Literal["source", "connection"] = Field(
        default="source",
        description="with several outside addresses: source: by source address (sticky); "
        "connection: round robin per new connection",
    )
    port_range: PortRange = (1024, 65535)
    random_fully: bool = Field(
        default=False,
        description="randomise every translated source port (nft fully-random) instead "
        "of keeping the workload's port when it is free",
    )
    timeouts: NatTimeouts = NatTimeouts()
    conntrack: NatConntrack = NatConntrack()

    @model_validator(mode="after")
    def _addresses(self) -> Nat:
        addresses = self.outside_addresses
        if isinstance(addresses, list):
            if not addresses:
                raise fail(
                    ("outside_addresses",),
                    [],
                    'expected "interface", "zone" or at least one address',
                )
            seen: set[IPv4Address] = set()
            issues = []
            for i, address in enumerate(addresses):
                if address in seen:
                    issues.append(
                        Issue(("outside_addresses", i), str(address), "duplicate address")
                    )
                seen.add(address)
            if issues:
                raise Issues(issues)
        return self


class Match(StrictModel):
    """A traffic selector: every given field must match; ``ports`` needs tcp or udp."""

    src: IPv4Network = ANY
    dst: IPv4Network = ANY
    proto: Proto | None = None
    ports: PortRange | None = Field(default=None, description="destination port range")

    @model_validator(mode="after")
    def _ports_need_l4(self) -> Match:
        if self.ports is not None and self.proto not in ("tcp", "udp"):
            raise fail(("proto",), self.proto, 'expected "tcp" or "udp" when ports are given')
        return self


class Rule(Match):
    """One allow or deny rule for traffic forwarded from inside to outside.

    ``src_set`` / ``dst_set`` name an entry of ``rules.ip_sets``: the side matches any
    CIDR of the set, in place of ``src`` / ``dst`` (a CIDR other than 0.0.0.0/0 with a
    set on the same side is refused)."""

    action: Literal["allow", "deny"]
    src_set: IpSetName | None = None
    dst_set: IpSetName | None = None
    comment: str | None = Field(default=None, max_length=128, pattern=r'^[^"\\\n]*$')

    @model_validator(mode="after")
    def _set_or_cidr(self) -> Rule:
        for side in ("src", "dst"):
            if getattr(self, f"{side}_set") is not None and getattr(self, side) != ANY:
                raise fail(
                    (f"{side}_set",),
                    getattr(self, f"{side}_set"),
                    f"expected either {side} or {side}_set, not both",
                )
        return self


class Rules(StrictModel):
    """Egress policy.

    Deny rules are stateless and win over allow rules (they are also pushed into the
    XDP deny list, which drops before anything else, up to 4,096 deny rules).  They
    apply to traffic forwarded from the inside interface, never to packets addressed to
    the gateway itself.  Allow rules admit new connections; with ``default: deny`` a
    new connection that matches no allow rule is dropped.
    """

    default: Literal["allow", "deny"] = "allow"
    entries: list[Rule] = Field(default_factory=list, max_length=8192)
    ip_sets: dict[IpSetName, IpSet] = Field(
        default_factory=dict, description="named CIDR lists rules match by src_set / dst_set"
    )

    @model_validator(mode="after")
    def _sets_exist(self) -> Rules:
        issues = []
        for i, rule in enumerate(self.entries):
            for field in ("src_set", "dst_set"):
                name = getattr(rule, field)
                if name is not None and name not in self.ip_sets:
                    accepted = ", ".join(sorted(self.ip_sets)) or "none defined"
                    issues.append(
                        Issue(
                            ("entries", i, field),
                            name,
                            f"expected a name of rules.ip_sets ({accepted})",
                        )
                    )
        if issues:
            raise Issues(issues)
        return self

    def prefixes(self, rule: Rule, side: Literal["src", "dst"]) -> tuple[Prefix, ...]:
        """The CIDRs one side of ``rule`` matches: its set's, or its one CIDR."""
        name: str | None = getattr(rule, f"{side}_set")
        if name is None:
            return (from_network(getattr(rule, side)),)
        return self.ip_sets[name].prefixes


MAX_MAPPED_PORTS = 4096  # a range moved to other ports: one nft map element a port


class PortForward(StrictModel):
    """Destination NAT: ``proto`` traffic to the outside ``port`` goes to ``to_address``.

    ``port_end`` makes it the range ``port..port_end``, mapped 1:1 onto
    ``to_port..to_port + (port_end - port)``. ``allow_from`` limits who may connect (new
    connections from other sources are dropped; empty: anyone). An inside workload that
    connects to the outside address is hairpinned: the same DNAT, plus SNAT to the
    gateway's inside address so the target's replies come back through the gateway."""

    proto: PortProto
    port: Port
    port_end: Port | None = Field(
        default=None, description="the last port of a range (inclusive); default: port alone"
    )
    to_address: IPv4Address
    to_port: Port | None = Field(default=None, description="default: the same as port")
    allow_from: list[IPv4Network] = Field(
        default_factory=list, max_length=256, description="sources allowed; empty: any"
    )
    comment: str | None = Field(default=None, max_length=128, pattern=r'^[^"\\\n]*$')

    @property
    def last_port(self) -> int:
        return self.port if self.port_end is None else self.port_end

    @property
    def target_port(self) -> int:
        return self.port if self.to_port is None else self.to_port

    @property
    def shifted(self) -> bool:
        """A range whose ports change (``to_port`` other than ``port``)."""
        return self.last_port > self.port and self.target_port != self.port

    @model_validator(mode="after")
    def _range(self) -> PortForward:
        span = self.last_port - self.port
        if span < 0:
            raise fail(("port_end",), self.port_end, f"expected a port >= port ({self.port})")
        if self.target_port + span > 65535:
            limit = f"expected at most {65535 - span} (the range has {span + 1} ports)"
            raise fail(("to_port",), self.to_port, limit)
        if self.shifted and span >= MAX_MAPPED_PORTS:
            raise fail(("port_end",), self.port_end,
                       f"expected at most {MAX_MAPPED_PORTS} ports when to_port moves the "
                       "range (or to_port equal to port: any size)")  # fmt: skip
        return self


class GwlbHealthCheck(StrictModel):
    """The port and protocol the GWLB target group probes."""

    protocol: Literal["tcp", "http"] = "tcp"
    port: Port = 80
    path: str = Field(default="/healthz", pattern=r"^/[\x21-\x7e]*$", max_length=512)


class Gwlb(StrictModel):
    """Gateway Load Balancer integration (GENEVE on UDP 6081).

    The agent attaches decap (XDP, or tc ingress: ``decap_hook``) and re-encap (tc
    egress) to ``interface`` (default: the inside interface), answers the health check
    on ``health_check.port``, takes GENEVE only from ``allowed_sources`` (when set),
    puts established two-arm flows on the XDP fast path (decap in XDP), and in one-arm
    mode routes what arrived on ``interface`` back out of it (via ``next_hop``; default
    the subnet's first address, the VPC router on AWS).
    """

    enabled: bool = False
    interface: IfName | None = Field(
        default=None, description="the GWLB-facing interface; default: interfaces.inside"
    )
    mode: Literal["one-arm", "two-arm"] = Field(
        default="one-arm",
        description="one-arm: replies re-encapsulated to the GWLB; two-arm: "
        "decapsulated traffic leaves by the outside interface (sNAT)",
    )
    decap_hook: Literal["auto", "xdp", "tc"] = Field(
        default="auto",
        description="auto: XDP where the driver and MTU allow it, else tc ingress; "
        "xdp: never tc; tc: always tc ingress",
    )
    next_hop: IPv4Address | None = Field(
        default=None,
        description="one-arm: where traffic goes back to the GWLB; default: the first "
        "address of the interface's subnet (the VPC router)",
    )
    health_check: GwlbHealthCheck = GwlbHealthCheck()
    flow_idle_timeout_seconds: Seconds = Field(
        default=350, description="GWLB's own idle timeout: 350"
    )
    allowed_sources: list[IPv4Network] = Field(
        default_factory=list,
        max_length=64,
        description="GWLB endpoint subnets GENEVE is accepted from (outer source, checked "
        "in the decap program); empty: any",
    )
