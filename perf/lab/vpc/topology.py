"""Every name and address of the VPC lab, in one place.

The AWS side (VPC, subnets, instances, ENIs, Elastic IPs, route tables, Auto Scaling
groups) is created in moto from these records by :mod:`perf.lab.vpc.seed`; the Linux
side (namespaces, links) by :mod:`perf.lab.vpc.build`. Resource ids are moto's and are
only known after seeding: read them from ``VpcLab.status()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

REGION = "us-east-1"
VPC_CIDR = "10.0.0.0/16"
RUN_DIR = Path("/run/spectra-vpclab")
LOCK_FILE = Path("/run/spectra-vpclab.lock")

ROUTER_NS = "cv-vpc"
IGW_NS = "cv-igw"
INET_NS = "cv-inet"

MGMT_BRIDGE = "cvmgmt"
MGMT_HOST_CIDR = "10.254.0.1/24"
MGMT_HOST_IP = "10.254.0.1"
MGMT_BRIDGE_MAC = "02:00:0a:fe:00:01"  # locally administered; fixed (see VpcLab)
MOTO_PORT = 4577
ENDPOINT_URL = f"http://{MGMT_HOST_IP}:{MOTO_PORT}"

# The router <-> internet gateway and internet gateway <-> internet links.
ROUTER_IGW_IF = "igw"
ROUTER_IGW_CIDR = "100.64.0.1/30"
IGW_VPC_IF = "vpc"
IGW_VPC_CIDR = "100.64.0.2/30"
IGW_INET_IF = "inet"
IGW_INET_CIDR = "100.64.1.1/30"
INET_IGW_IF = "igw"
INET_IGW_CIDR = "100.64.1.2/30"

INET_SERVICE_IP = "198.51.100.10"
IMDS_IP = "169.254.169.254"

LEASE_TABLE = "spectra-leader-lease"
"""DynamoDB leader-lease table (the default of the config document's ``aws.lease.table``)."""
VPC_NAME = "spectra-vpclab"
SSM_PREFIX = "/spectra/config"
"""Where the config document lives in SSM (``ssm:/spectra/config``)."""
NAME_TAG = "Name"
"""Instances carry their lab name in this tag; the mirror names router links from it."""

# Lifecycle hooks every gateway ASG has.
LAUNCH_HOOK = "spectra-launch"
TERMINATE_HOOK = "spectra-terminate"


@dataclass(frozen=True, slots=True)
class Az:
    """One Availability Zone: a private (workload) and a public (gateway) subnet."""

    name: str  # lab name: "a", "b"
    zone: str  # us-east-1a
    private_cidr: str
    public_cidr: str
    nat_ip: str  # the secondary private IP the Elastic IP is associated with
    eip: str

    @property
    def asg(self) -> str:
        return f"spectra-gw-{self.name}"


@dataclass(frozen=True, slots=True)
class Nic:
    """One ENI of a lab instance: ``eth<device>`` inside the instance's namespace."""

    device: int
    subnet: str  # "private" or "public"
    ip: str


@dataclass(frozen=True, slots=True)
class Instance:
    """A lab instance: a gateway (two ENIs, IMDS, management link) or a workload."""

    name: str  # a1, a2, b1, ws-a, ws-b
    az: str
    role: str  # "gateway" or "workload"
    nics: tuple[Nic, ...]
    mgmt_ip: str | None = None

    @property
    def netns(self) -> str:
        return f"cv-gw-{self.name}" if self.role == "gateway" else f"cv-{self.name}"

    def link(self, device: int) -> str:
        """The router-side name of this instance's ``eth<device>`` link."""
        return router_link(self.name, device)

    @property
    def mgmt_host_if(self) -> str:
        return f"cvm-{self.name}"


def router_link(name: str, device: int) -> str:
    """Router-side link of ENI ``device`` of the instance tagged ``name``."""
    return f"{name}-eth{device}"


def router_ip(cidr: str) -> str:
    """The VPC router's address in a subnet (the first host address, as in AWS)."""
    return str(IPv4Network(cidr)[1])


@dataclass(frozen=True, slots=True)
class Topology:
    azs: tuple[Az, ...]
    instances: tuple[Instance, ...]

    def az(self, name: str) -> Az:
        for az in self.azs:
            if az.name == name:
                return az
        raise KeyError(f"unknown AZ {name!r}; the lab has {[a.name for a in self.azs]}")

    def instance(self, name: str) -> Instance:
        for inst in self.instances:
            if inst.name == name:
                return inst
        raise KeyError(f"unknown instance {name!r}; the lab has {[i.name for i in self.instances]}")

    def subnet_cidr(self, inst: Instance, nic: Nic) -> str:
        az = self.az(inst.az)
        return az.private_cidr if nic.subnet == "private" else az.public_cidr

    @property
    def gateways(self) -> tuple[Instance, ...]:
        return tuple(i for i in self.instances if i.role == "gateway")

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (ROUTER_NS, IGW_NS, INET_NS, *(i.netns for i in self.instances))


def _gateway(name: str, az: str, host: int, mgmt_ip: str) -> Instance:
    n = 1 if az == "a" else 2
    return Instance(
        name=name,
        az=az,
        role="gateway",
        nics=(Nic(0, "public", f"10.0.{100 + n}.{host}"), Nic(1, "private", f"10.0.{n}.{host}")),
        mgmt_ip=mgmt_ip,
    )


TOPOLOGY = Topology(
    azs=(
        Az("a", f"{REGION}a", "10.0.1.0/24", "10.0.101.0/24", "10.0.101.100", "203.0.113.10"),
        Az("b", f"{REGION}b", "10.0.2.0/24", "10.0.102.0/24", "10.0.102.100", "203.0.113.20"),
    ),
    instances=(
        _gateway("a1", "a", 11, "10.254.0.11"),
        _gateway("a2", "a", 12, "10.254.0.12"),
        _gateway("b1", "b", 11, "10.254.0.21"),
        Instance("ws-a", "a", "workload", (Nic(0, "private", "10.0.1.50"),)),
        Instance("ws-b", "b", "workload", (Nic(0, "private", "10.0.2.50"),)),
    ),
)
