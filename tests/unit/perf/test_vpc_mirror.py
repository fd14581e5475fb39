"""The VPC mirror's pure part: EC2 answers -> router routes, rules, src/dst checks and
the internet gateway's 1:1 translation (no root, no moto)."""

from __future__ import annotations

from typing import Any

import pytest

from perf.lab.vpc.model import IGW_IP, Eni, Next, Ownership, desired, snapshot
from perf.lab.vpc.render import igw_nft, router_nft

VPC = {"VpcId": "vpc-1", "CidrBlock": "10.0.0.0/16"}
SUBNETS = [
    {"SubnetId": "subnet-pub", "VpcId": "vpc-1", "CidrBlock": "10.0.101.0/24"},
    {"SubnetId": "subnet-prv", "VpcId": "vpc-1", "CidrBlock": "10.0.1.0/24"},
]
NAT_IP = "10.0.101.100"


def _instance(iid: str, name: str, check: bool = True) -> dict[str, Any]:
    return {"InstanceId": iid, "Tags": [{"Key": "Name", "Value": name}], "SourceDestCheck": check}


def _eni(
    eni_id: str, iid: str, device: int, subnet: str, ips: list[str], check: bool = True
) -> dict[str, Any]:
    return {
        "NetworkInterfaceId": eni_id,
        "VpcId": "vpc-1",
        "SubnetId": subnet,
        "MacAddress": f"02:00:00:00:00:{len(eni_id):02x}",
        "PrivateIpAddress": ips[0],
        "PrivateIpAddresses": [
            {"PrivateIpAddress": ip, "Primary": i == 0} for i, ip in enumerate(ips)
        ],
        "SourceDestCheck": check,
        "Attachment": {"InstanceId": iid, "DeviceIndex": device},
    }


def _rtb(
    rtb_id: str, subnets: list[str], routes: list[dict[str, Any]], main: bool = False
) -> dict[str, Any]:
    assocs: list[dict[str, Any]] = [{"SubnetId": s, "Main": False} for s in subnets]
    if main:
        assocs.append({"Main": True})
    local = {"DestinationCidrBlock": "10.0.0.0/16", "GatewayId": "local", "State": "active"}
    return {
        "RouteTableId": rtb_id,
        "VpcId": "vpc-1",
        "Associations": assocs,
        "Routes": [local, *routes],
    }


IGWS = [{"InternetGatewayId": "igw-1", "Attachments": [{"VpcId": "vpc-1", "State": "available"}]}]
INSTANCES = [_instance("i-a1", "a1"), _instance("i-a2", "a2"), _instance("i-ws", "ws-a")]


def _enis(a1_check: bool = True, nat_on: tuple[str, ...] = ("a1",)) -> list[dict[str, Any]]:
    def outside(name: str, ip: str) -> list[str]:
        return [ip, NAT_IP] if name in nat_on else [ip]

    return [
        _eni("eni-a1o", "i-a1", 0, "subnet-pub", outside("a1", "10.0.101.11"), a1_check),
        _eni("eni-a1i", "i-a1", 1, "subnet-prv", ["10.0.1.11"], a1_check),
        _eni("eni-a2o", "i-a2", 0, "subnet-pub", outside("a2", "10.0.101.12"), False),
        _eni("eni-a2i", "i-a2", 1, "subnet-prv", ["10.0.1.12"], False),
        _eni("eni-ws", "i-ws", 0, "subnet-prv", ["10.0.1.50"]),
        # an ENI of an instance the lab has no namespace for (e.g. launched by the ASG)
        _eni("eni-x", "i-x", 0, "subnet-prv", ["10.0.1.99"]),
    ]


def _tables(private_target: str = "eni-a1i") -> list[dict[str, Any]]:
    return [
        _rtb("rtb-main", [], [], main=True),
        _rtb(
            "rtb-pub", ["subnet-pub"], [{"DestinationCidrBlock": "0.0.0.0/0", "GatewayId": "igw-1"}]
        ),
        _rtb(
            "rtb-prv",
            ["subnet-prv"],
            [{"DestinationCidrBlock": "0.0.0.0/0", "NetworkInterfaceId": private_target}],
        ),
    ]


EIPS = [{"PublicIp": "203.0.113.10", "AssociationId": "eipassoc-1", "PrivateIpAddress": NAT_IP}]


def _snap(**kw: Any) -> Any:
    return snapshot(
        VPC,
        SUBNETS,
        kw.get("instances", INSTANCES),
        kw.get("enis", _enis()),
        kw.get("tables", _tables()),
        kw.get("eips", EIPS),
        IGWS,
    )


def _state(snap: Any, ownership: Ownership | None = None) -> Any:
    own = (ownership or Ownership()).advance(snap.enis)
    return desired(snap, own.owners), own


def test_every_private_ip_routes_to_the_link_of_its_eni() -> None:
    state, _ = _state(_snap())
    assert state.local_cidr == "10.0.0.0/16"
    assert state.hosts == {
        "10.0.101.11": "a1-eth0",
        NAT_IP: "a1-eth0",
        "10.0.1.11": "a1-eth1",
        "10.0.101.12": "a2-eth0",
        "10.0.1.12": "a2-eth1",
        "10.0.1.50": "ws-a-eth0",
    }  # 10.0.1.99 has no link: not routed (falls to the VPC blackhole)
    assert state.neighbours[NAT_IP] == ("a1-eth0", "02:00:00:00:00:07")


def test_route_tables_select_by_incoming_eni_and_name_their_targets() -> None:
    state, _ = _state(_snap())
    assert state.rules == {
        "a1-eth0": "rtb-pub",
        "a2-eth0": "rtb-pub",
        "a1-eth1": "rtb-prv",
        "a2-eth1": "rtb-prv",
        "ws-a-eth0": "rtb-prv",
    }
    assert state.tables["rtb-pub"] == {"0.0.0.0/0": Next("igw", IGW_IP)}
    assert state.tables["rtb-prv"] == {"0.0.0.0/0": Next("a1-eth1", "10.0.1.11")}
    assert state.tables["rtb-main"] == {}  # the local route is the router's main table


def test_subnet_without_association_uses_the_main_table() -> None:
    tables = _tables()
    tables[2]["Associations"] = []
    tables[0]["Routes"].append({"DestinationCidrBlock": "0.0.0.0/0", "GatewayId": "igw-1"})
    state, _ = _state(_snap(tables=tables))
    assert state.rules["ws-a-eth0"] == "rtb-main"
    assert state.tables["rtb-main"]["0.0.0.0/0"] == Next("igw", IGW_IP)


def test_replace_route_moves_the_default_to_the_other_eni() -> None:
    state, _ = _state(_snap(tables=_tables("eni-a2i")))
    assert state.tables["rtb-prv"]["0.0.0.0/0"] == Next("a2-eth1", "10.0.1.12")


def test_route_to_an_instance_uses_its_primary_eni() -> None:
    tables = _tables()
    tables[2]["Routes"] = [{"DestinationCidrBlock": "0.0.0.0/0", "InstanceId": "i-a2"}]
    state, _ = _state(_snap(tables=tables))
    assert state.tables["rtb-prv"]["0.0.0.0/0"] == Next("a2-eth0", "10.0.101.12")


@pytest.mark.parametrize(
    "route",
    [
        {
            "DestinationCidrBlock": "0.0.0.0/0",
            "NetworkInterfaceId": "eni-gone",
            "State": "blackhole",
        },
        {"DestinationCidrBlock": "0.0.0.0/0", "NetworkInterfaceId": "eni-x"},  # no lab link
        {"DestinationCidrBlock": "0.0.0.0/0", "NatGatewayId": "nat-1"},  # not modelled
        {"DestinationCidrBlock": "0.0.0.0/0", "GatewayId": "igw-of-another-vpc"},
    ],
)
def test_unusable_targets_are_blackholes(route: dict[str, Any]) -> None:
    tables = _tables()
    tables[2]["Routes"] = [route]
    state, _ = _state(_snap(tables=tables))
    assert state.tables["rtb-prv"]["0.0.0.0/0"].blackhole


def test_source_dest_check_lists_the_addresses_each_checked_eni_holds() -> None:
    state, _ = _state(_snap())
    assert state.checked["a1-eth0"] == {"10.0.101.11", NAT_IP}
    assert state.checked["a1-eth1"] == {"10.0.1.11"}
    assert state.checked["ws-a-eth0"] == {"10.0.1.50"}
    assert "a2-eth0" not in state.checked and "a2-eth1" not in state.checked
    text = router_nft(state.checked)
    assert 'iifname "a1-eth0" ip saddr != { 10.0.101.100, 10.0.101.11 } counter drop' in text
    assert 'oifname "ws-a-eth0" ip daddr != { 10.0.1.50 } counter drop' in text
    assert "a2-eth0" not in text


def test_instance_attribute_is_the_primary_eni_check() -> None:
    instances = [_instance("i-a1", "a1", check=False), *INSTANCES[1:]]
    state, _ = _state(_snap(instances=instances))
    assert "a1-eth0" not in state.checked  # the primary ENI follows the instance attribute
    assert "a1-eth1" in state.checked  # a secondary ENI keeps its own


def test_igw_translates_every_association_and_only_those() -> None:
    state, _ = _state(_snap())
    assert state.nat == {"203.0.113.10": NAT_IP}
    text = igw_nft(state.nat)
    assert "elements = { 203.0.113.10 : 10.0.101.100 }" in text
    assert "elements = { 10.0.101.100 : 203.0.113.10 }" in text
    assert "policy drop" in text and "notrack" in text
    unassociated = _snap(eips=[{"PublicIp": "203.0.113.10", "AllocationId": "eipalloc-1"}])
    state, _ = _state(unassociated)
    assert state.nat == {}
    assert "elements" not in igw_nft(state.nat)  # no private source gets out


def test_auto_assigned_public_ips_are_translated_too() -> None:
    enis = _enis()
    enis[4]["Association"] = {"PublicIp": "198.18.0.7", "IpOwnerId": "amazon"}
    enis[0]["Association"] = {"PublicIp": "203.0.113.10", "IpOwnerId": "123456789012"}  # the EIP
    state, _ = _state(_snap(enis=enis))
    assert state.nat == {"203.0.113.10": NAT_IP, "198.18.0.7": "10.0.1.50"}


def test_reassigned_secondary_left_on_the_old_eni_goes_to_the_newest_claimant() -> None:
    first, own = _state(_snap())
    assert first.hosts[NAT_IP] == "a1-eth0"
    # moto <= 5.2.x after AssignPrivateIpAddresses(AllowReassignment) to a2: both claim it.
    both, own = _state(_snap(enis=_enis(nat_on=("a1", "a2"))), own)
    assert both.hosts[NAT_IP] == "a2-eth0"
    assert both.neighbours[NAT_IP][0] == "a2-eth0"
    assert NAT_IP not in both.checked["a1-eth0"]  # a1 no longer holds it
    assert both.nat == {"203.0.113.10": NAT_IP}  # the association follows the address
    # the next poll shows the same double claim: a2 keeps it
    again, own = _state(_snap(enis=_enis(nat_on=("a1", "a2"))), own)
    assert again.hosts[NAT_IP] == "a2-eth0"
    # moved back to a1 (a1 still showed it, so a1 is no newcomer): a2 dropped it
    back, own = _state(_snap(enis=_enis(nat_on=("a1",))), own)
    assert back.hosts[NAT_IP] == "a1-eth0"


def test_reassignment_back_to_the_old_holder_is_seen_when_it_shows_anew() -> None:
    _, own = _state(_snap())
    _, own = _state(_snap(enis=_enis(nat_on=("a2",))), own)  # a clean move to a2
    both, own = _state(_snap(enis=_enis(nat_on=("a1", "a2"))), own)  # back to a1, moto-style
    assert both.hosts[NAT_IP] == "a1-eth0"


def test_a_primary_address_is_never_taken_by_a_secondary_claim() -> None:
    enis = _enis()
    enis[2]["PrivateIpAddresses"].append({"PrivateIpAddress": "10.0.101.11", "Primary": False})
    state, _ = _state(_snap(enis=enis))
    assert state.hosts["10.0.101.11"] == "a1-eth0"


def test_enis_of_other_vpcs_are_ignored() -> None:
    enis = _enis()
    enis[4]["VpcId"] = "vpc-2"
    snap = _snap(enis=enis)
    assert "eni-ws" not in {e.id for e in snap.enis}


def test_ownership_is_deterministic_without_history() -> None:
    a = Eni("eni-b", "s", "m", "10.0.0.5", ("10.0.0.9",), True, "x")
    b = Eni("eni-a", "s", "m", "10.0.0.6", ("10.0.0.9",), True, "y")
    assert Ownership().advance([a, b]).owners["10.0.0.9"] == "eni-a"
