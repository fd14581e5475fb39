"""The lab: network namespaces joined by veth links that stand in for a VPC, its
gateways and the internet. It is the development environment (``make run``, every
netns and e2e test, ``spectra lab``) and the benchmarks' testbed.

* :mod:`perf.lab.topology` — every namespace, link and address (add a namespace there);
* :mod:`perf.lab.build` — :class:`Lab` (up, down, status) and :func:`held`;
* :mod:`perf.lab.servers` — the servers in the internet namespace;
* :mod:`perf.lab.host` — namespace exec, detached processes, the lab lock;
* :mod:`perf.lab.gwlbsim` — the GWLB simulator and the lab extension that adds it.

The product never imports this package at module level: only the development-only
``spectra lab`` commands load it, lazily.
"""

from perf.lab.build import Lab, held
from perf.lab.host import (
    BPF_PIN_ROOT,
    RUN_DIR,
    LabError,
    exclusive,
    ns_exec,
    require_root,
    run_in,
)
from perf.lab.topology import INET_SERVICE_IP, TOPOLOGY, Gateway, Topology

__all__ = [
    "BPF_PIN_ROOT",
    "INET_SERVICE_IP",
    "RUN_DIR",
    "TOPOLOGY",
    "Gateway",
    "Lab",
    "LabError",
    "Topology",
    "exclusive",
    "held",
    "ns_exec",
    "require_root",
    "run_in",
]
