"""control.aws.fallback against a moto server: the leader of one AZ takes the private
routes of an AZ whose lease ran out ``after_s`` ago, fenced by its own lease and by the
per-AZ claim item (two AZs never both adopt one orphan), and leaves them when the AZ's
own lease is live again. Time is an injected clock; nothing sleeps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from control.aws import Lease, MemoryNotifier, SessionFactory
from control.aws.fallback import (
    COST_WARNING,
    CrossAzFallback,
    FallbackSettings,
    OtherZone,
    fallback_key,
)
from control.aws.lease import KEY
from control.aws.takeover import point_routes
from control.config import ConfigValidationError, parse_document
from tests.unit.control.aws.conftest import REGION, FakeClock, admin_client
from tests.unit.control.aws.test_lease import make, warm

pytestmark = pytest.mark.unit

AZS = ("eu-west-1a", "eu-west-1b", "eu-west-1c")
AFTER = 3.0
SKEW = 1.0


@dataclass(frozen=True)
class Vpc:
    ec2: Any
    eni: dict[str, str]  # az -> the inside ENI of its gateway
    rtb: dict[str, str]  # az -> its private route table


@pytest.fixture
def vpc(moto_endpoint: str) -> Vpc:
    ec2 = admin_client(moto_endpoint, "ec2")
    vpc_id = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    eni, rtb = {}, {}
    for i, az in enumerate(AZS):
        subnet = ec2.create_subnet(VpcId=vpc_id, CidrBlock=f"10.0.{i}.0/24")["Subnet"]
        eni[az] = ec2.create_network_interface(SubnetId=subnet["SubnetId"])["NetworkInterface"][
            "NetworkInterfaceId"
        ]
        rtb[az] = ec2.create_route_table(VpcId=vpc_id)["RouteTable"]["RouteTableId"]
        ec2.associate_route_table(RouteTableId=rtb[az], SubnetId=subnet["SubnetId"])
        ec2.create_route(
            RouteTableId=rtb[az], DestinationCidrBlock="0.0.0.0/0", NetworkInterfaceId=eni[az]
        )
    return Vpc(ec2, eni, rtb)


def default_eni(vpc: Vpc, az: str) -> str:
    table = vpc.ec2.describe_route_tables(RouteTableIds=[vpc.rtb[az]])["RouteTables"][0]
    route = next(r for r in table["Routes"] if r.get("DestinationCidrBlock") == "0.0.0.0/0")
    return str(route["NetworkInterfaceId"])


@dataclass
class FakeRoutes:
    """The kernel routes a fallback added (cidr, via, ifname)."""

    held: set[tuple[str, str, str]] = field(default_factory=set)

    def add(self, cidr: str, via: str, ifname: str) -> None:
        self.held.add((cidr, via, ifname))

    def remove(self, cidr: str, via: str, ifname: str) -> None:
        self.held.discard((cidr, via, ifname))


@dataclass
class Az:
    """The leader of one AZ: its lease and its fallback."""

    lease: Lease
    fallback: CrossAzFallback
    events: MemoryNotifier
    routes: FakeRoutes

    def period(self) -> None:
        token = self.lease.token
        if self.lease.step() and self.lease.token is not None:
            self.fallback.step(self.lease.token)
        elif token is not None:
            self.fallback.release_all("lost its own lease")


def leader(
    factory: SessionFactory, table: str, vpc: Vpc, clock: FakeClock, az: str, moto: str
) -> Az:
    events, routes = MemoryNotifier(), FakeRoutes()
    lease = make(factory, table, f"i-{az[-1]}", clock, key=az, skew_margin_s=SKEW)
    router = f"10.0.{AZS.index(az)}.1"
    fallback = CrossAzFallback(
        factory.instance_client("dynamodb"),
        FallbackSettings(table, az, f"i-{az[-1]}", vpc.eni[az], "eth1", router, AFTER, 5.0, SKEW),
        tuple(OtherZone(other, (vpc.rtb[other],)) for other in AZS if other != az),
        lambda: admin_client(moto, "ec2"),
        notifier=events,
        clock=clock,
        routes=routes,
    )
    return Az(lease, fallback, events, routes)


@pytest.fixture
def fleet(
    factory: SessionFactory, lease_table: str, vpc: Vpc, clock: FakeClock, moto_endpoint: str
) -> dict[str, Az]:
    azs = {az: leader(factory, lease_table, vpc, clock, az, moto_endpoint) for az in AZS}
    warm(clock, *(a.lease for a in azs.values()))
    assert all(a.lease.is_leader for a in azs.values())
    return azs


def run(clock: FakeClock, azs: list[Az], seconds: float) -> None:
    """Every leader's period, once a second, for ``seconds``."""
    for _ in range(int(seconds)):
        for a in azs:
            a.period()
        clock.advance(1.0)


def claim(moto: str, table: str, az: str) -> dict[str, Any] | None:
    item: dict[str, Any] | None = (
        admin_client(moto, "dynamodb")
        .get_item(TableName=table, Key={KEY: {"S": fallback_key(az)}}, ConsistentRead=True)
        .get("Item")
    )
    return item


def test_an_orphaned_az_is_adopted_after_after_s_and_given_back(
    fleet: dict[str, Az], vpc: Vpc, clock: FakeClock, lease_table: str, moto_endpoint: str
) -> None:
    a, b, c = fleet["eu-west-1a"], fleet["eu-west-1b"], fleet["eu-west-1c"]
    run(clock, [a, b, c], 3)
    assert default_eni(vpc, "eu-west-1b") == vpc.eni["eu-west-1b"]  # b leads: left alone
    # b's gateway dies: its lease (5 s) runs out, then after_s + skew more; a looks first
    run(clock, [a, c], 5 + AFTER - 1)
    assert default_eni(vpc, "eu-west-1b") == vpc.eni["eu-west-1b"]
    assert a.fallback.status()["adopted"] == {}
    run(clock, [a, c], 2)
    assert default_eni(vpc, "eu-west-1b") == vpc.eni["eu-west-1a"]
    item = claim(moto_endpoint, lease_table, "eu-west-1b")
    assert (
        item is not None
        and item["holder"]["S"] == "i-a"
        and item["holder_az"]["S"] == ("eu-west-1a")
    )
    assert [(e.kind, e.key) for e in a.events.events] == [("fallback_took", "fallback#eu-west-1b")]
    # replies to b's workloads go back through a's inside interface, via its VPC router
    assert a.routes.held == {("10.0.1.0/24", "10.0.0.1", "eth1")}
    status = a.fallback.status()
    assert status["counters"]["adopted"] == 1 and status["warning"] == COST_WARNING
    assert status["adopted"]["eu-west-1b"]["routes"] == f"replaced {vpc.rtb['eu-west-1b']}"
    run(clock, [a, c], 3)  # renewed, nothing rewritten, no new event; c refused
    assert c.fallback.status()["adopted"] == {} and c.events.events == []
    assert a.fallback.status()["adopted"]["eu-west-1b"]["routes"] == "already ours"
    assert len(a.events.events) == 1
    # b's gateway returns: it takes its lease (a new token) and its routes back
    b.lease.step()  # its old term ran out...
    b.lease.step()  # ...and it acquires the lease again, with a new token
    assert b.lease.is_leader
    point_routes(vpc.ec2, (vpc.rtb["eu-west-1b"],), vpc.eni["eu-west-1b"], lambda _: None, "routes")
    run(clock, [a, b, c], 3)
    assert default_eni(vpc, "eu-west-1b") == vpc.eni["eu-west-1b"]
    assert [e.kind for e in a.events.events] == ["fallback_took", "fallback_returned"]
    assert "held again" in a.events.events[-1].reason
    item = claim(moto_endpoint, lease_table, "eu-west-1b")
    assert item is not None and float(item["expires"]["N"]) == 0
    assert a.fallback.status()["adopted"] == {} and a.routes.held == set()


def test_two_azs_never_adopt_the_same_orphan(
    fleet: dict[str, Az], vpc: Vpc, clock: FakeClock
) -> None:
    a, c = fleet["eu-west-1a"], fleet["eu-west-1c"]
    run(clock, [a, c], 5 + AFTER + 2)
    adopters = [x for x in (a, c) if "eu-west-1b" in x.fallback.status()["adopted"]]
    assert len(adopters) == 1
    winner, loser = (a, c) if adopters[0] is a else (c, a)
    assert default_eni(vpc, "eu-west-1b") == winner.fallback.settings.inside_eni
    assert [e.kind for e in loser.events.events] == []
    # the winner loses its own lease (its gateway dies too): its claim runs out and
    # the other leader adopts the orphan
    run(clock, [loser], 5 + AFTER + 2)
    assert "eu-west-1b" in loser.fallback.status()["adopted"]
    assert default_eni(vpc, "eu-west-1b") == loser.fallback.settings.inside_eni


def test_a_leader_that_lost_its_own_lease_writes_nothing(
    factory: SessionFactory,
    fleet: dict[str, Az],
    vpc: Vpc,
    clock: FakeClock,
    lease_table: str,
) -> None:
    a = fleet["eu-west-1a"]
    run(clock, [a], 5 + AFTER + 2)
    assert default_eni(vpc, "eu-west-1b") == vpc.eni["eu-west-1a"]
    vpc.ec2.replace_route(
        RouteTableId=vpc.rtb["eu-west-1b"],
        DestinationCidrBlock="0.0.0.0/0",
        NetworkInterfaceId=vpc.eni["eu-west-1b"],
    )
    # a's lease is taken by a standby of a while a does not know yet (the fence)
    token = a.lease.token
    assert token is not None
    clock.advance(7)
    standby = make(factory, lease_table, "i-a2", clock, key="eu-west-1a", skew_margin_s=SKEW)
    warm(clock, standby)
    assert standby.is_leader
    a.fallback.step(token)
    assert default_eni(vpc, "eu-west-1b") == vpc.eni["eu-west-1b"]
    assert a.fallback.status()["adopted"] == {}
    event = a.events.events[-1]
    assert event.kind == "fallback_returned" and "no longer holds its own lease" in event.reason
    assert a.routes.held == set()


def test_an_az_that_never_had_a_lease_is_not_adopted(
    factory: SessionFactory, lease_table: str, vpc: Vpc, clock: FakeClock, moto_endpoint: str
) -> None:
    a = leader(factory, lease_table, vpc, clock, "eu-west-1a", moto_endpoint)
    warm(clock, a.lease)
    run(clock, [a], 5 + AFTER + 5)
    assert a.fallback.status()["adopted"] == {}
    assert all(default_eni(vpc, az) == vpc.eni[az] for az in AZS)


def test_a_foreign_route_table_is_refused_and_reported(
    fleet: dict[str, Az], vpc: Vpc, clock: FakeClock
) -> None:
    igw = vpc.ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    vpc.ec2.replace_route(
        RouteTableId=vpc.rtb["eu-west-1b"], DestinationCidrBlock="0.0.0.0/0", GatewayId=igw
    )
    a = fleet["eu-west-1a"]
    run(clock, [a], 5 + AFTER + 2)
    error = a.fallback.status()["errors"]["eu-west-1b"]
    assert igw in error and "aws.zones.eu-west-1b.route_tables" in error
    table = vpc.ec2.describe_route_tables(RouteTableIds=[vpc.rtb["eu-west-1b"]])["RouteTables"]
    assert any(r.get("GatewayId") == igw for r in table[0]["Routes"])


def _aws(**fallback: Any) -> dict[str, Any]:
    zones = {
        az: {"nat_address": f"10.0.{i}.100", "route_tables": [f"rtb-0000000{i}"]}
        for i, az in enumerate(AZS[:2])
    }
    return {"region": REGION, "zones": zones, "cross_az_fallback": fallback}


def _doc(aws: dict[str, Any]) -> Any:
    return parse_document({"interfaces": {"inside": "eth1", "outside": "eth0"}, "aws": aws})


def test_the_fallback_is_off_by_default_and_needs_two_zones() -> None:
    doc = _doc(_aws())
    assert doc.aws.cross_az_fallback.enabled is False
    on = _doc(_aws(enabled=True, after_s=5))
    assert on.aws.cross_az_fallback.after_s == 5
    one = _aws(enabled=True)
    one["zones"].pop(AZS[1])
    with pytest.raises(ConfigValidationError, match=r"cross_az_fallback.*two aws.zones"):
        _doc(one)
    with pytest.raises(ConfigValidationError, match=r"after_s"):
        _doc(_aws(enabled=True, after_s=0.1))
