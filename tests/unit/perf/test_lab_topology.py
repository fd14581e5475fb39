"""The lab's address plan: no overlaps, private inside, documentation ranges outside."""

from __future__ import annotations

import ipaddress
import itertools

from perf.lab import TOPOLOGY

PRIVATE = ipaddress.ip_network("10.0.0.0/8")
DOC = [ipaddress.ip_network(n) for n in ("198.51.100.0/24", "203.0.113.0/24")]


def _subnets() -> list[ipaddress.IPv4Network]:
    nets = []
    for gw in TOPOLOGY.gateways:
        for cidr in (gw.inside_cidr, gw.outside_cidr, gw.mgmt_cidr):
            nets.append(ipaddress.ip_interface(cidr).network)
    return nets


def test_subnets_do_not_overlap() -> None:
    for a, b in itertools.combinations(_subnets(), 2):
        assert not a.overlaps(b), (a, b)


def test_each_link_puts_both_ends_in_one_subnet() -> None:
    for gw in TOPOLOGY.gateways:
        for x, y in (
            (gw.inside_cidr, gw.workload_cidr),
            (gw.outside_cidr, gw.inet_cidr),
            (gw.mgmt_cidr, gw.mgmt_host_cidr),
        ):
            assert ipaddress.ip_interface(x).network == ipaddress.ip_interface(y).network


def test_workloads_are_private_and_the_internet_is_documentation_space() -> None:
    for gw in TOPOLOGY.gateways:
        assert ipaddress.ip_address(gw.workload_ip) in PRIVATE
        assert any(ipaddress.ip_address(gw.outside_ip) in n for n in DOC)
    svc = ipaddress.ip_interface(TOPOLOGY.inet_service_cidr).ip
    assert any(svc in n for n in DOC)


def test_namespaces_follow_the_naming_contract() -> None:
    assert set(TOPOLOGY.namespaces) == {"cs-inet", "cs-gw-a", "cs-gw-b", "cs-ws-a", "cs-ws-b"}
