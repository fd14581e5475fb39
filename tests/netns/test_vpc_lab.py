"""The VPC simulator carries real traffic by moto's state: a NAT on a1 reaches the
internet as the Elastic IP; moving the NAT address and the route through the EC2 API
moves the traffic to a2 with the same public address; IMDSv2 answers only with a token;
a killed instance drops out of the path; ``down`` leaves the host as it found it."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from perf.lab.vpc import VpcLab
from perf.lab.vpc.topology import MGMT_BRIDGE, MGMT_BRIDGE_MAC, RUN_DIR
from tests.netns.helpers import sh

pytestmark = pytest.mark.timeout(240)

NAT = """
table ip labnat {
    chain post {
        type nat hook postrouting priority srcnat;
        oifname "eth0" counter snat to %s
    }
}
"""


def _host_snapshot() -> tuple[str, str, bool]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True)
    names = "\n".join(sorted(line.split()[0] for line in links.stdout.splitlines()))
    return netns.stdout, names, RUN_DIR.exists()


@pytest.fixture(scope="module")
def vpc() -> Iterator[VpcLab]:
    lab = VpcLab()
    with lab.exclusive():
        lab.down()
        try:
            lab.up()
            yield lab
        finally:
            lab.down()


def _nat_gateway(lab: VpcLab, name: str, nat_ip: str) -> None:
    """What the agent will do: forward, and translate to the NAT address."""
    st = lab.status()["instances"][name]
    ec2 = lab.clients()["ec2"]
    for eni in st["enis"].values():
        ec2.modify_network_interface_attribute(
            NetworkInterfaceId=eni["eni_id"], SourceDestCheck={"Value": False}
        )
    ns = st["netns"]
    assert sh(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1").returncode == 0
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "-f", "-"],
        input=NAT % nat_ip,
        text=True,
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


def _nat_packets(ns: str) -> int:
    out = sh(ns, "nft", "-j", "list", "table", "ip", "labnat").stdout
    for item in json.loads(out)["nftables"]:
        rule = item.get("rule")
        if rule:
            for expr in rule["expr"]:
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
    raise AssertionError(f"no NAT counter in {ns}")


def _curl(ns: str) -> dict[str, Any]:
    proc = sh(ns, "curl", "-s", "-m", "3", "http://198.51.100.10/")
    assert proc.returncode == 0, f"curl from {ns}: rc={proc.returncode} {proc.stderr}"
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def _echo(ns: str, proto: str) -> str:
    script = (
        "import socket,sys\n"
        f"s=socket.socket(socket.AF_INET, socket.SOCK_{'STREAM' if proto == 'tcp' else 'DGRAM'})\n"
        "s.settimeout(3)\n"
        "s.connect(('198.51.100.10', 7))\n"
        "s.send(b'spectra')\n"
        "sys.stdout.write(s.recv(100).decode())\n"
    )
    proc = sh(ns, "python3", "-c", script, timeout=10)
    return proc.stdout


def test_up_is_idempotent_and_names_everything(vpc: VpcLab) -> None:
    st = vpc.up()
    assert st["up"], st["processes"]
    assert st["endpoint_url"] == "http://10.254.0.1:4577"
    assert set(st["instances"]) == {"a1", "a2", "b1", "ws-a", "ws-b"}
    assert st["azs"]["a"]["nat_ip_eni"] == st["instances"]["a1"]["enis"]["eth0"]["eni_id"]
    assert st["mirror"]["error"] is None


def test_without_a_nat_nothing_reaches_the_internet(vpc: VpcLab) -> None:
    # Source/destination check on a1 and no public address for the workload: dropped.
    assert sh("cv-ws-a", "curl", "-s", "-m", "2", "http://198.51.100.10/").returncode != 0


def test_nat_moves_with_the_api_calls(vpc: VpcLab) -> None:
    st = vpc.status()
    az = st["azs"]["a"]
    nat_ip, eip = az["nat_ip"], az["eip"]
    _nat_gateway(vpc, "a1", nat_ip)
    vpc.sync()
    assert _curl("cv-ws-a")["client_ip"] == eip
    assert _echo("cv-ws-a", "tcp") == "spectra"
    assert _echo("cv-ws-a", "udp") == "spectra"
    through_a1 = _nat_packets("cv-gw-a1")
    assert through_a1 >= 3

    ec2 = vpc.clients()["ec2"]
    a2 = st["instances"]["a2"]["enis"]
    ec2.assign_private_ip_addresses(
        NetworkInterfaceId=a2["eth0"]["eni_id"],
        PrivateIpAddresses=[nat_ip],
        AllowReassignment=True,
    )
    ec2.associate_address(
        AllocationId=az["eip_allocation_id"],
        NetworkInterfaceId=a2["eth0"]["eni_id"],
        PrivateIpAddress=nat_ip,
        AllowReassociation=True,
    )
    ec2.replace_route(
        RouteTableId=az["private_route_table_id"],
        DestinationCidrBlock="0.0.0.0/0",
        NetworkInterfaceId=a2["eth1"]["eni_id"],
    )
    _nat_gateway(vpc, "a2", nat_ip)
    vpc.sync()
    after = vpc.status()["azs"]["a"]
    assert after["nat_ip_eni"] == a2["eth0"]["eni_id"]
    assert after["private_default_route_eni"] == a2["eth1"]["eni_id"]
    assert _curl("cv-ws-a")["client_ip"] == eip
    assert _echo("cv-ws-a", "udp") == "spectra"
    assert _nat_packets("cv-gw-a2") >= 2
    assert _nat_packets("cv-gw-a1") == through_a1  # nothing went through a1 any more

    # a1 dies: traffic through a2 is untouched; moving the route back to a1 blackholes it.
    vpc.kill_instance("a1")
    assert not vpc.alive("a1")
    assert _curl("cv-ws-a")["client_ip"] == eip
    ec2.replace_route(
        RouteTableId=az["private_route_table_id"],
        DestinationCidrBlock="0.0.0.0/0",
        NetworkInterfaceId=st["instances"]["a1"]["enis"]["eth1"]["eni_id"],
    )
    vpc.sync()
    assert sh("cv-ws-a", "curl", "-s", "-m", "2", "http://198.51.100.10/").returncode != 0
    vpc.revive_instance("a1")
    assert vpc.alive("a1")
    assert sh("cv-gw-a1", "nft", "list", "ruleset").stdout.strip() == ""  # a clean boot
    # the management bridge kept its address: the other agents' ARP entries still hold
    link = subprocess.run(
        ["ip", "-j", "link", "show", MGMT_BRIDGE], capture_output=True, text=True, check=True
    )
    assert json.loads(link.stdout)[0]["address"] == MGMT_BRIDGE_MAC


def _fetch(ns: str, url: str, *headers: str, method: str = "GET") -> tuple[str, str]:
    """(HTTP status, body) of ``url`` from namespace ``ns``."""
    argv = ["curl", "-s", "-m", "3", "-X", method, "-w", "\n%{http_code}", url]
    for header in headers:
        argv += ["-H", header]
    body, _, code = sh(ns, *argv).stdout.rpartition("\n")
    return code, body


def test_imds_needs_a_token(vpc: VpcLab) -> None:
    st = vpc.status()
    ns = st["instances"]["a2"]["netns"]
    url = "http://169.254.169.254/latest"
    assert _fetch(ns, f"{url}/meta-data/instance-id")[0] == "401"
    code, token = _fetch(
        ns, f"{url}/api/token", "X-aws-ec2-metadata-token-ttl-seconds: 60", method="PUT"
    )
    assert code == "200" and token
    got = _fetch(ns, f"{url}/meta-data/instance-id", f"X-aws-ec2-metadata-token: {token}")
    assert got == ("200", st["instances"]["a2"]["instance_id"])


def test_moto_reaches_the_instances_over_management_only(vpc: VpcLab) -> None:
    ns = vpc.status()["instances"]["b1"]["netns"]
    assert _fetch(ns, "http://10.254.0.1:4577/moto-api/")[0] == "200"
    listening = subprocess.run(["ss", "-Htln"], capture_output=True, text=True).stdout
    assert "0.0.0.0:4577" not in listening and "10.254.0.1:4577" in listening


def test_down_leaves_nothing_behind(vpc: VpcLab) -> None:
    """(Last: takes the module's lab down, under the module's lock.)"""
    vpc.down()
    before = _host_snapshot()
    vpc.up()
    assert _host_snapshot() != before
    vpc.down()
    vpc.down()  # down with nothing up is fine
    assert _host_snapshot() == before
    assert not before[2]
    assert not any(p["pid"] for p in vpc.status()["processes"].values())
    deadline = time.monotonic() + 5
    while subprocess.run(["pgrep", "-f", "perf.lab.vpc"], capture_output=True).stdout:
        assert time.monotonic() < deadline, "vpclab processes survived down()"
        time.sleep(0.1)
