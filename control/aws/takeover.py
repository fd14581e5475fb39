"""Takeover: what a new leader of an Availability Zone does to become its NAT gateway.

The AZ's stable endpoint is one private IP (the *NAT address*) with the AZ's Elastic
IP associated to it, and the AZ's private route tables send ``0.0.0.0/0`` to the
leader's inside ENI. Taking over moves all three to this instance, in this order:

1. ``nat_address``: ``AssignPrivateIpAddresses`` of the NAT address to the outside ENI
   with ``AllowReassignment`` (it leaves the old leader's ENI), and the address on the
   outside interface in the OS (EC2 delivers it only to an interface that owns it);
2. ``elastic_ip``: ``AssociateAddress`` of the AZ's allocation to that ENI and private
   IP with ``AllowReassociation`` (a no-op when it already points there);
3. ``routes``: ``ReplaceRoute`` (``CreateRoute`` where the table has no default route)
   of ``0.0.0.0/0`` in each private route table to the inside ENI.

(EC2 API reference: AssignPrivateIpAddresses, AssociateAddress, ReplaceRoute.) Steps
1 and 2 use the instance role (its own addresses); step 3 the operational role. Each
step is idempotent and checks the current state first, so a takeover that failed half
way is simply run again: :meth:`Takeover.run` reports which step failed (an AWS error,
an operational role that is inert, an OS error: every failure, never an exception out of
the worker) and the agent retries every lease period while it holds the lease. Before
every write the fence (the lease's conditional ``still_holds``) is asked again: a
leader that lost its lease without knowing it stops before it moves anything. A route
table that is not ours -- its default route points at an internet, NAT or transit
gateway, a peering or an endpoint, or the table is in another VPC -- is refused and
named, never overwritten.

:meth:`Takeover.release` is the reverse for this instance only: the NAT address leaves
the OS interface (EC2 state is left to the next leader, who reassigns it).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from control.aws.session import RoleInert, describe_error, error_code

log = logging.getLogger("spectra.aws")

DEFAULT_ROUTE = "0.0.0.0/0"
FOREIGN_TARGETS = (
    "GatewayId",
    "NatGatewayId",
    "TransitGatewayId",
    "VpcPeeringConnectionId",
    "CarrierGatewayId",
    "LocalGatewayId",
    "CoreNetworkArn",
)
STEPS = ("nat_address", "elastic_ip", "routes")


class Fenced(Exception):
    """The lease was lost during a takeover; nothing more may be written."""


class TakeoverFailed(Exception):
    """One takeover step failed; ``step`` names it."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Zone:
    """What the leader of one AZ holds (the document's ``aws.zones.<az>``)."""

    az: str
    nat_address: str
    allocation_id: str | None
    route_table_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Enis:
    """This instance's two interfaces: outside (NAT address, EIP) and inside (routes)."""

    outside_eni: str
    outside_ifname: str
    inside_eni: str
    prefix_len: int  # of the outside subnet, for the OS address


class AddressOps(Protocol):
    """The NAT address on an OS interface (pyroute2 in the product, a fake in tests)."""

    def add(self, ifname: str, address: str, prefix_len: int) -> None: ...

    def remove(self, ifname: str, address: str, prefix_len: int) -> None: ...


class KernelAddresses:
    """:class:`AddressOps` on this network namespace, with pyroute2."""

    def add(self, ifname: str, address: str, prefix_len: int) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=ifname)[0]
            present = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=index, family=2)}
            if address not in present:
                ipr.addr("add", index=index, address=address, prefixlen=prefix_len)

    def remove(self, ifname: str, address: str, prefix_len: int) -> None:
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=ifname)
            if not found:
                return
            try:
                ipr.addr("del", index=found[0], address=address, prefixlen=prefix_len)
            except NetlinkError as exc:
                if exc.code != 99:  # EADDRNOTAVAIL: not there, nothing to do
                    raise


@dataclass(slots=True)
class Report:
    """One takeover run: each step's outcome and how long the whole run took."""

    token: int
    steps: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    ok: bool = False
    error: str | None = None
    # the failure without its message (AWS messages may differ per request): what a
    # failure notified once is compared by
    cause: str | None = None


class Takeover:
    """Moves one AZ's NAT address, Elastic IP and routes to this instance."""

    def __init__(
        self,
        zone: Zone,
        enis: Enis,
        instance_ec2: Callable[[], Any],
        operational_ec2: Callable[[], Any],
        addresses: AddressOps | None = None,
    ) -> None:
        self.zone = zone
        self.enis = enis
        self._instance_ec2 = instance_ec2
        self._operational_ec2 = operational_ec2
        self._addresses = addresses or KernelAddresses()
        self._fence: Callable[[], bool] = lambda: False

    def run(self, token: int, fence: Callable[[], bool]) -> Report:
        """Every step, in order; raises nothing: the report says what happened."""
        report = Report(token)
        started = time.monotonic()
        actions: dict[str, Callable[[], str]] = {
            "nat_address": self._nat_address,
            "elastic_ip": self._elastic_ip,
            "routes": self._routes,
        }
        self._fence = fence
        for name in STEPS:
            try:
                self._check_fence(name)
                report.steps[name] = actions[name]()
            except Fenced as exc:
                report.steps[name] = "fenced"
                report.error = str(exc)
                break
            except (ClientError, BotoCoreError) as exc:
                report.steps[name] = "failed"
                report.error = f"{name}: {describe_error(exc)}"
                report.cause = f"{name}: {error_code(exc) or type(exc).__name__}"
                break
            except TakeoverFailed as exc:
                report.steps[name] = "failed"
                report.error = report.cause = str(exc)
                break
            except RoleInert as exc:  # the routes' operational role: named, retried
                report.steps[name] = "failed"
                report.error = f"{name}: operational role inert: {exc.reason}"
                report.cause = f"{name}: operational role inert"
                break
            except Exception as exc:  # an OS address, a broken client: never a silent death
                log.exception("takeover of %s: %s", self.zone.az, name)
                report.steps[name] = "failed"
                report.error = f"{name}: {type(exc).__name__}: {exc}"
                report.cause = f"{name}: {type(exc).__name__}"
                break
        report.ok = report.error is None
        report.seconds = round(time.monotonic() - started, 3)
        (log.info if report.ok else log.error)(
            "takeover of %s (token %d): %s in %.3fs%s",
            self.zone.az,
            token,
            report.steps,
            report.seconds,
            f": {report.error}" if report.error else "",
        )
        return report

    def warm(self) -> str | None:
        """Create both roles' clients now (the operational role is assumed here), so a
        takeover does not wait for STS; the reason when that fails (retried then)."""
        try:
            self._instance_ec2()
            self._operational_ec2()
        except Exception as exc:  # RoleInert, botocore errors: reported, not fatal here
            return str(exc)
        return None

    def release(self) -> None:
        """This instance stops answering for the NAT address (OS side only)."""
        self._addresses.remove(
            self.enis.outside_ifname, self.zone.nat_address, self.enis.prefix_len
        )

    # -- steps ------------------------------------------------------------------------

    def _check_fence(self, before: str) -> None:
        try:
            held = self._fence()
        except Exception as exc:  # the lease table cannot answer: write nothing
            raise Fenced(f"the lease cannot be confirmed before {before}: {exc}") from exc
        if not held:
            raise Fenced(f"the lease is no longer held (before {before})")

    def _nat_address(self) -> str:
        ec2 = self._instance_ec2()
        eni = ec2.describe_network_interfaces(NetworkInterfaceIds=[self.enis.outside_eni])
        held = {p["PrivateIpAddress"] for p in eni["NetworkInterfaces"][0]["PrivateIpAddresses"]}
        outcome = "already held"
        if self.zone.nat_address not in held:
            ec2.assign_private_ip_addresses(
                NetworkInterfaceId=self.enis.outside_eni,
                PrivateIpAddresses=[self.zone.nat_address],
                AllowReassignment=True,
            )
            outcome = "assigned"
        self._addresses.add(self.enis.outside_ifname, self.zone.nat_address, self.enis.prefix_len)
        return outcome

    def _elastic_ip(self) -> str:
        if self.zone.allocation_id is None:
            return "none configured"
        ec2 = self._instance_ec2()
        found = ec2.describe_addresses(AllocationIds=[self.zone.allocation_id])["Addresses"]
        if not found:
            raise TakeoverFailed("elastic_ip", f"{self.zone.allocation_id} does not exist")
        current = found[0]
        if (
            current.get("NetworkInterfaceId") == self.enis.outside_eni
            and current.get("PrivateIpAddress") == self.zone.nat_address
        ):
            return "already associated"
        ec2.associate_address(
            AllocationId=self.zone.allocation_id,
            NetworkInterfaceId=self.enis.outside_eni,
            PrivateIpAddress=self.zone.nat_address,
            AllowReassociation=True,
        )
        return "associated"

    def _routes(self) -> str:
        if not self.zone.route_table_ids:
            return "none configured"
        return point_routes(
            self._operational_ec2(),
            self.zone.route_table_ids,
            self.enis.inside_eni,
            self._check_fence,
            f"aws.zones.{self.zone.az}.route_tables",
        )


def point_routes(
    ec2: Any,
    route_table_ids: tuple[str, ...],
    eni: str,
    fence: Callable[[str], None],
    field_name: str,
) -> str:
    """``0.0.0.0/0`` of each table to ``eni`` (ReplaceRoute, CreateRoute where there is
    none); ``fence(before)`` raises :class:`Fenced` before each write when it may not
    happen. A table in another VPC or whose default route is not an ENI's is refused
    (:class:`TakeoverFailed` naming ``field_name``), never overwritten."""
    tables = ec2.describe_route_tables(RouteTableIds=list(route_table_ids))
    vpc = str(
        ec2.describe_network_interfaces(NetworkInterfaceIds=[eni])["NetworkInterfaces"][0]["VpcId"]
    )
    moved = []
    for table in tables["RouteTables"]:
        rtb = table["RouteTableId"]
        if table.get("VpcId") != vpc:
            raise TakeoverFailed("routes", f"{rtb} is in {table.get('VpcId')}, not {vpc}")
        default = next(
            (r for r in table["Routes"] if r.get("DestinationCidrBlock") == DEFAULT_ROUTE),
            None,
        )
        fence(f"routes: {rtb}")
        if default is None:
            ec2.create_route(
                RouteTableId=rtb, DestinationCidrBlock=DEFAULT_ROUTE, NetworkInterfaceId=eni
            )
            moved.append(rtb)
            continue
        foreign = [k for k in FOREIGN_TARGETS if default.get(k) and default[k] != "local"]
        if foreign:
            raise TakeoverFailed(
                "routes",
                f"{rtb}: {DEFAULT_ROUTE} points at {default[foreign[0]]}, not at a "
                f"gateway ENI; not ours to move (remove it or take the table out of "
                f"{field_name})",
            )
        if default.get("NetworkInterfaceId") == eni:
            continue
        ec2.replace_route(
            RouteTableId=rtb, DestinationCidrBlock=DEFAULT_ROUTE, NetworkInterfaceId=eni
        )
        moved.append(rtb)
    return f"replaced {', '.join(moved)}" if moved else "already ours"


def prefix_len(cidr: str) -> int:
    """The prefix length of a subnet CIDR (``10.0.101.0/24`` -> 24)."""
    return ipaddress.ip_network(cidr, strict=False).prefixlen
