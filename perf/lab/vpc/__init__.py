"""The VPC simulator: a moto server holds an AWS VPC and a mirror makes the lab's
namespaces carry traffic the way that VPC would, so an API call that moves an address or
a route really moves the traffic, and nothing in the product knows it is in a lab.

::

                       root namespace: motod (moto, http://10.254.0.1:4577), mirror
                         bridge cvmgmt 10.254.0.1/24
            +-------------------+----------------------+------------------+
            | mgmt .11          | mgmt .12             | mgmt .21         |
    cv-gw-a1 (IMDS)      cv-gw-a2 (IMDS)         cv-gw-b1 (IMDS)          |
    eth0 10.0.101.11     eth0 10.0.101.12        eth0 10.0.102.11         |
    eth1 10.0.1.11       eth1 10.0.1.12          eth1 10.0.2.11           |
      |     |              |     |                 |     |                |
    a1-eth0 a1-eth1      a2-eth0 a2-eth1         b1-eth0 b1-eth1          |
    +---------------------------------------------------------------+
    | cv-vpc: the VPC router                                         |
    |   main: /32 per private IP -> link of the ENI holding it       |
    |         (permanent neighbour = ENI MAC), blackhole 10.0.0.0/16 |
    |   rule 100: to 10.0.0.0/16 lookup main   (the local route)     |
    |   rule 1000: iif <ENI link> lookup <its subnet's route table>  |
    |   nft: source/destination check per ENI                        |
    +---------------------------------------------------------------+
      ws-a-eth0        ws-b-eth0                   igw 100.64.0.1
        |                |                           |
    cv-ws-a          cv-ws-b                  vpc 100.64.0.2
    eth0 10.0.1.50   eth0 10.0.2.50           cv-igw: stateless 1:1 NAT
                                                Elastic IP <-> private IP
                                              inet 100.64.1.1
                                                     |
                                              igw 100.64.1.2
                                              cv-inet: 198.51.100.10
                                                (http :80, tcp/udp echo :7)

In moto (region us-east-1): VPC 10.0.0.0/16 with an internet gateway; per AZ (a:
us-east-1a, b: us-east-1b) a private subnet (10.0.1.0/24, 10.0.2.0/24: workloads and
the gateways' inside ENIs) and a public one (10.0.101.0/24, 10.0.102.0/24: the
gateways' outside ENIs), a public route table (0.0.0.0/0 -> internet gateway) and a
private one (0.0.0.0/0 -> the leader's inside ENI); gateways a1, a2 (AZ a) and b1
(AZ b), each with an outside ENI (eth0) and an inside ENI (eth1), in one Auto Scaling
group per AZ with launch and termination lifecycle hooks; per AZ a NAT address
(10.0.101.100, 10.0.102.100: a secondary private IP on the leader's outside ENI,
first a1 and b1) with an Elastic IP (203.0.113.10, 203.0.113.20); the DynamoDB lease
table :data:`~perf.lab.vpc.topology.LEASE_TABLE` (hash key ``az``); the config prefix
:data:`~perf.lab.vpc.topology.SSM_PREFIX`. Source/destination checks start on.

Modules: :mod:`.topology` (names and addresses), :mod:`.seed` (the moto resources),
:mod:`.model` (moto's answers -> router and gateway state: pure, unit-tested),
:mod:`.render` (the nftables tables), :mod:`.mirror` (the controller),
:mod:`.motod` (moto with the AWS behaviours moto lacks), :mod:`.imds` (IMDSv2 per
gateway instance, :mod:`perf.lab.imds` read live from moto), :mod:`.build`
(:class:`VpcLab`), :mod:`.fleet` (the product's agents in the gateways), :mod:`.run`
(``spectra lab run``, i.e. ``make run``: the lab and the fleet until Ctrl-C).

Use: ``sudo python -m perf.lab.vpc up|down|status [--json]``, or from Python::

    lab = VpcLab()
    with lab.exclusive():
        st = lab.up()              # ids, addresses, endpoint: see VpcLab.status()
        ec2 = lab.clients()["ec2"] # boto3 against st["endpoint_url"]
        ...                        # API calls, then lab.sync() before sending traffic
        lab.kill_instance("a1")    # SIGKILL its processes, links down
        lab.revive_instance("a1")  # a clean reboot
        lab.down()
"""

from perf.lab.vpc.build import VpcLab
from perf.lab.vpc.topology import (
    ENDPOINT_URL,
    INET_SERVICE_IP,
    LEASE_TABLE,
    SSM_PREFIX,
    TOPOLOGY,
)

__all__ = ["ENDPOINT_URL", "INET_SERVICE_IP", "LEASE_TABLE", "SSM_PREFIX", "TOPOLOGY", "VpcLab"]
