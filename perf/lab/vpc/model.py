"""What the VPC looks like on the wire, computed from moto's answers: pure data, no root.

:func:`snapshot` turns the four EC2 ``Describe*`` answers into a :class:`Snapshot`;
:func:`desired` turns a snapshot into the router's and the internet gateway's state
(:class:`VpcState`), which :mod:`perf.lab.vpc.mirror` applies to the namespaces.

The AWS behaviour modelled here, with the documents it follows:

* Route tables (VPC User Guide, "Configure route tables"): a subnet uses the route table
  explicitly associated with it, else the VPC's main route table. The ``local`` route
  (the VPC CIDR) wins over every other route, so VPC-internal traffic is delivered to
  the ENI holding the destination address whatever the table says. A route to an ENI
  (or to an instance, i.e. its primary ENI) sends the packet to that ENI with its
  destination unchanged; a route to the internet gateway sends it there; a route whose
  target is gone is a black hole.
* The table that applies is the one of the subnet of the ENI that *sent* the packet,
  not of the packet's source address, so the router selects tables by incoming link
  (``ip rule iif``), not by source prefix: a gateway forwarding a workload's packet out
  of its public ENI is routed by the public table.
* Source/destination check (EC2 User Guide, "Change source or destination checking"):
  an ENI with the check on only sends packets from, and receives packets to, its own
  private addresses. The instance attribute is the primary ENI's attribute.
* Elastic IPs (EC2 User Guide, "Elastic IP addresses"; VPC User Guide, "Internet
  gateways"): the internet gateway translates 1:1 and statelessly between a public
  address and the private address it is associated with; a private address without a
  public one cannot reach the internet. An association is with a private address, and
  stays with it when the address is reassigned to another ENI. A public IPv4 address
  assigned at launch translates to its ENI's primary address the same way.
* Secondary private IPs moved with ``AssignPrivateIpAddresses(AllowReassignment=True)``
  leave the old ENI. moto up to 5.2.x keeps the address on the old ENI as well; the
  lab's moto launcher (:mod:`perf.lab.vpc.motod`) fixes that, and :class:`Ownership`
  resolves any remaining double claim the AWS way: the ENI that newly shows an address
  holds it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from perf.lab.vpc.topology import IGW_VPC_CIDR, NAME_TAG, ROUTER_IGW_IF, router_link

log = logging.getLogger("spectra.perf")

IGW_LINK = ROUTER_IGW_IF
IGW_IP = IGW_VPC_CIDR.split("/")[0]


@dataclass(frozen=True, slots=True)
class Eni:
    """An ENI as the router sees it."""

    id: str
    subnet_id: str
    mac: str
    primary_ip: str
    secondary_ips: tuple[str, ...]
    source_dest_check: bool
    link: str | None  # the router-side link, when the lab built one for this ENI

    @property
    def ips(self) -> tuple[str, ...]:
        return (self.primary_ip, *self.secondary_ips)


@dataclass(frozen=True, slots=True)
class Route:
    """One non-local route of a route table, by target."""

    destination: str
    gateway_id: str | None = None  # igw-...
    eni_id: str | None = None
    instance_id: str | None = None  # a route to an instance goes to its primary ENI
    blackhole: bool = False


@dataclass(frozen=True, slots=True)
class RouteTable:
    id: str
    main: bool
    subnet_ids: tuple[str, ...]
    routes: tuple[Route, ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The part of the VPC the router and the internet gateway depend on."""

    vpc_cidr: str
    subnets: Mapping[str, str]  # subnet id -> CIDR
    enis: tuple[Eni, ...]
    route_tables: tuple[RouteTable, ...]
    eips: Mapping[str, str]  # public IP -> associated private IP
    igw_ids: frozenset[str]
    primary_enis: Mapping[str, str] = field(default_factory=dict)  # instance id -> ENI id


@dataclass(frozen=True, slots=True)
class Next:
    """Where a route sends packets on the router: out of ``link`` to ``via``, or nowhere."""

    link: str | None = None
    via: str | None = None

    @property
    def blackhole(self) -> bool:
        return self.link is None


@dataclass(frozen=True, slots=True)
class VpcState:
    """The router's and the internet gateway's state for one snapshot."""

    local_cidr: str
    hosts: Mapping[str, str]  # private IP -> router link of the ENI holding it
    neighbours: Mapping[str, tuple[str, str]]  # private IP -> (link, ENI MAC)
    tables: Mapping[str, Mapping[str, Next]]  # route table id -> destination -> next hop
    rules: Mapping[str, str]  # router link -> route table id of its ENI's subnet
    checked: Mapping[str, frozenset[str]]  # link with src/dst check -> its addresses
    nat: Mapping[str, str]  # public IP -> private IP


@dataclass(frozen=True, slots=True)
class Ownership:
    """Which ENI holds each private address, remembered across snapshots.

    AWS never lets two ENIs hold one address; when a snapshot shows it on several,
    the one that did not show it in the previous snapshot took it last and holds it.
    """

    claims: Mapping[str, frozenset[str]] = field(default_factory=dict)  # ip -> ENI ids
    owners: Mapping[str, str] = field(default_factory=dict)  # ip -> ENI id

    def advance(self, enis: Iterable[Eni]) -> Ownership:
        claims: dict[str, set[str]] = {}
        primaries: dict[str, str] = {}
        for eni in enis:
            primaries[eni.primary_ip] = eni.id
            for ip in eni.ips:
                claims.setdefault(ip, set()).add(eni.id)
        owners: dict[str, str] = {}
        for ip, claimants in claims.items():
            if ip in primaries:  # a primary address cannot move
                owners[ip] = primaries[ip]
            elif len(claimants) == 1:
                owners[ip] = next(iter(claimants))
            else:
                newcomers = claimants - self.claims.get(ip, frozenset())
                previous = self.owners.get(ip)
                if newcomers:
                    owners[ip] = min(newcomers)
                elif previous in claimants:
                    owners[ip] = previous
                else:
                    owners[ip] = min(claimants)
                if owners[ip] != previous:
                    log.info("%s is claimed by %s; %s holds it", ip, sorted(claimants), owners[ip])
        return Ownership({ip: frozenset(c) for ip, c in claims.items()}, owners)


def desired(snap: Snapshot, owners: Mapping[str, str]) -> VpcState:
    """The router and internet-gateway state for ``snap``, given who holds each address."""
    by_id = {eni.id: eni for eni in snap.enis}
    hosts: dict[str, str] = {}
    neighbours: dict[str, tuple[str, str]] = {}
    held: dict[str, set[str]] = {}
    for ip, eni_id in owners.items():
        held.setdefault(eni_id, set()).add(ip)
        eni = by_id[eni_id]
        if eni.link is not None:
            hosts[ip] = eni.link
            neighbours[ip] = (eni.link, eni.mac)

    tables: dict[str, dict[str, Next]] = {}
    for rtb in snap.route_tables:
        tables[rtb.id] = {r.destination: _next(r, by_id, snap) for r in rtb.routes}

    main = next((t.id for t in snap.route_tables if t.main), None)
    table_of = {s: t.id for t in snap.route_tables for s in t.subnet_ids}
    rules: dict[str, str] = {}
    checked: dict[str, frozenset[str]] = {}
    for eni in snap.enis:
        if eni.link is None:
            continue
        rtb_id = table_of.get(eni.subnet_id, main)
        if rtb_id is not None:
            rules[eni.link] = rtb_id
        if eni.source_dest_check:
            checked[eni.link] = frozenset(held.get(eni.id, ()))

    nat = {public: private for public, private in snap.eips.items() if private in owners}
    return VpcState(snap.vpc_cidr, hosts, neighbours, tables, rules, checked, nat)


def _next(route: Route, enis: Mapping[str, Eni], snap: Snapshot) -> Next:
    if route.blackhole:
        return Next()
    if route.gateway_id is not None and route.gateway_id in snap.igw_ids:
        return Next(link=IGW_LINK, via=IGW_IP)
    eni_id = route.eni_id
    if eni_id is None and route.instance_id is not None:
        eni_id = snap.primary_enis.get(route.instance_id)
    if eni_id is not None:
        eni = enis.get(eni_id)
        if eni is not None and eni.link is not None:
            return Next(link=eni.link, via=eni.primary_ip)
    return Next()  # a target the lab does not model, or one without a link


# -- from the EC2 API's answers ------------------------------------------------------


def snapshot(
    vpc: Mapping[str, Any],
    subnets: Iterable[Mapping[str, Any]],
    instances: Iterable[Mapping[str, Any]],
    enis: Iterable[Mapping[str, Any]],
    route_tables: Iterable[Mapping[str, Any]],
    addresses: Iterable[Mapping[str, Any]],
    igws: Iterable[Mapping[str, Any]],
) -> Snapshot:
    """A :class:`Snapshot` of ``vpc`` from ``Describe*`` answers (boto3's shapes)."""
    vpc_id = vpc["VpcId"]
    names: dict[str, str] = {}
    instance_check: dict[str, bool] = {}
    for inst in instances:
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
        if NAME_TAG in tags:
            names[inst["InstanceId"]] = tags[NAME_TAG]
        instance_check[inst["InstanceId"]] = bool(inst.get("SourceDestCheck", True))
    enis = list(enis)
    out: list[Eni] = []
    primary_enis: dict[str, str] = {}
    for raw in enis:
        if raw.get("VpcId") != vpc_id:
            continue
        attachment = raw.get("Attachment") or {}
        instance_id = attachment.get("InstanceId")
        device = attachment.get("DeviceIndex")
        if device == 0 and instance_id:
            primary_enis[instance_id] = raw["NetworkInterfaceId"]
        link = None
        if instance_id in names and device is not None:
            link = router_link(names[instance_id], int(device))
        check = bool(raw.get("SourceDestCheck", True))
        if device == 0 and instance_id in instance_check:
            check = check and instance_check[instance_id]
        primary = raw["PrivateIpAddress"]
        secondary = tuple(
            p["PrivateIpAddress"]
            for p in raw.get("PrivateIpAddresses", [])
            if not p.get("Primary") and p["PrivateIpAddress"] != primary
        )
        out.append(
            Eni(
                raw["NetworkInterfaceId"],
                raw["SubnetId"],
                raw["MacAddress"].lower(),
                primary,
                secondary,
                check,
                link,
            )
        )
    tables = []
    for rtb in route_tables:
        if rtb.get("VpcId") != vpc_id:
            continue
        assocs = rtb.get("Associations", [])
        tables.append(
            RouteTable(
                id=rtb["RouteTableId"],
                main=any(a.get("Main") for a in assocs),
                subnet_ids=tuple(a["SubnetId"] for a in assocs if a.get("SubnetId")),
                routes=tuple(_route(r) for r in rtb.get("Routes", []) if _routable(r)),
            )
        )
    return Snapshot(
        vpc_cidr=vpc["CidrBlock"],
        subnets={s["SubnetId"]: s["CidrBlock"] for s in subnets if s.get("VpcId") == vpc_id},
        enis=tuple(out),
        route_tables=tuple(tables),
        eips=_public_addresses(addresses, enis),
        igw_ids=frozenset(
            g["InternetGatewayId"]
            for g in igws
            if any(a.get("VpcId") == vpc_id for a in g.get("Attachments", []))
        ),
        primary_enis=primary_enis,
    )


def _public_addresses(
    addresses: Iterable[Mapping[str, Any]], enis: Iterable[Mapping[str, Any]]
) -> dict[str, str]:
    """Public IP -> private IP: every associated Elastic IP, and the public IPv4 address
    EC2 assigned at launch to an ENI's primary address (shown on the ENI, owned by
    ``amazon``, never in ``DescribeAddresses``)."""
    out = {
        a["PublicIp"]: a["PrivateIpAddress"]
        for a in addresses
        if a.get("AssociationId") and a.get("PrivateIpAddress")
    }
    for raw in enis:
        public = (raw.get("Association") or {}).get("PublicIp")
        if public and public not in out and raw.get("Association", {}).get("IpOwnerId") == "amazon":
            out[public] = raw["PrivateIpAddress"]
    return out


def _routable(raw: Mapping[str, Any]) -> bool:
    return bool(raw.get("DestinationCidrBlock")) and raw.get("GatewayId") != "local"


def _route(raw: Mapping[str, Any]) -> Route:
    return Route(
        destination=raw["DestinationCidrBlock"],
        gateway_id=raw.get("GatewayId"),
        eni_id=raw.get("NetworkInterfaceId"),
        instance_id=raw.get("InstanceId"),
        blackhole=raw.get("State") == "blackhole",
    )
