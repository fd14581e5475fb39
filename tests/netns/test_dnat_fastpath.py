"""Destination-NATed flows on the XDP fast path, with real traffic through cs-gw-a.

Four iperf3 TCP transfers, each to a server in the workload ``cs-ws-a``:

* a **port forward** from the internet (``cs-inet`` -> the outside address :5301 ->
  the workload :5301);
* an **L4 load-balancer listener** on the outside address (:9500 -> the workload :5302);
* **hairpin**: the workload to the outside address's forward, i.e. back to itself, DNAT
  and masquerade to the gateway's inside address, both legs on the inside interface;
* a load-balancer listener on the **inside address** (:9600 -> the workload :5302),
  the workload its client: hairpin again.

Each time, while the transfer runs: the XDP flow table holds both directions with the
kernel's mapping (keys on the interface each leg arrives on, translated addresses and
ports), both entries' fast-path packet counters rise, and the conntrack entry survives
although the established timeout is 5 s and the kernel sees next to none of the
packets (same conntrack id at the start and near the end: the offloader kept it
alive). The transfer completes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Address
from typing import Any

import pytest

from control.agent import read_state
from perf.lab import TOPOLOGY, ns_exec
from tests.netns.helpers import agent, document, reset_gateway, sh, wait_for
from xdp import Dataplane, FlowEntry, FlowKey
from xdp.records import FLOW_F_DENY_TRANSLATED

GW = TOPOLOGY.gateway("a")
INET = TOPOLOGY.inet_netns
INET_LINK_IP = IPv4Address(GW.inet_cidr.split("/")[0])  # cs-inet on the outside link
OUTSIDE, INSIDE, WORKLOAD = (IPv4Address(a) for a in (GW.outside_ip, GW.inside_ip,
                                                       GW.workload_ip))  # fmt: skip
FORWARD_PORT, LB_PORT, LB_BACKEND_PORT, HEALTH_PORT = 5301, 9500, 5302, 9501
INSIDE_LB_PORT = 9600
SECONDS = 9
TCP = 6


def backend_states() -> set[str]:
    lb = (read_state(GW.netns) or {}).get("load_balancer", {})
    listeners = lb.get("listeners", {})
    return {b["state"] for name in ("web", "internal")
            for b in listeners.get(name, {}).get("backends", {}).values()}  # fmt: skip


def ifindex(name: str) -> int:
    return int(sh(GW.netns, "cat", f"/sys/class/net/{name}/ifindex").stdout)


def the_doc() -> dict[str, Any]:
    forward = {"proto": "tcp", "port": FORWARD_PORT, "to_address": GW.workload_ip}
    listener = {
        "name": "web", "port": LB_PORT,
        "backends": [{"address": GW.workload_ip, "port": LB_BACKEND_PORT}],
        "health_check": {"port": HEALTH_PORT, "interval_seconds": 1, "timeout_seconds": 0.5},
    }  # fmt: skip
    inside = {**listener, "name": "internal", "address": "inside", "port": INSIDE_LB_PORT}
    return document(
        nat={"timeouts": {"tcp_established": 5}},
        port_forwards=[forward],
        load_balancer={"enabled": True, "listeners": [listener, inside]},
    )


@pytest.fixture
def servers(lab: Any) -> Iterator[None]:
    """iperf3 servers on both backend ports and a health responder, in the workload."""
    reset_gateway(GW.netns)
    procs = [
        subprocess.Popen(ns_exec(GW.workload_netns, "iperf3", "-s", "-p", str(port)),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in (FORWARD_PORT, LB_BACKEND_PORT)
    ]  # fmt: skip
    health = subprocess.Popen(
        ns_exec(GW.workload_netns, sys.executable, "-m", "tests.netns.lb_backend", "serve",
                "health", GW.workload_ip, str(HEALTH_PORT)),
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert health.stdout is not None and health.stdout.readline().strip() == "listening"
        time.sleep(0.3)  # iperf3 -s has no ready line
        yield
    finally:
        for proc in (*procs, health):
            proc.terminate()
            proc.wait(timeout=5)
        if health.stdout is not None:
            health.stdout.close()
        reset_gateway(GW.netns)


def offloaded(want: FlowKey) -> tuple[FlowKey, FlowEntry, FlowKey, FlowEntry] | None:
    """The forward entry matching ``want`` (its source port ignored when 0) and the
    entry of the other direction it names, when both are in the table."""
    dp = Dataplane.adopt(GW.netns)
    try:
        table = dict(dp.flows())
    finally:
        dp.close()
    for key, entry in table.items():
        if (key.ifindex, key.saddr, key.daddr, key.dport, key.proto) == (
            want.ifindex, want.saddr, want.daddr, want.dport, want.proto,
        ) and (not want.sport or key.sport == want.sport):  # fmt: skip
            back_key = FlowKey(entry.egress_ifindex, entry.new_daddr, entry.new_saddr,
                               entry.new_dport, entry.new_sport, key.proto)  # fmt: skip
            back = table.get(back_key)
            if back is not None and entry.packets > 100:  # the data connection
                return key, entry, back_key, back
    return None


def conntrack_id(*match: str) -> set[str]:
    out = sh(GW.netns, "conntrack", "-L", "-p", "tcp", "-o", "id", *match).stdout
    return {line.split("id=")[1].split()[0] for line in out.splitlines() if "id=" in line}


def transfer(ns: str, host: IPv4Address, port: int, want: FlowKey) -> tuple[
    FlowKey, FlowEntry, FlowKey, FlowEntry
]:  # fmt: skip
    """Run iperf3 from ``ns`` to ``host``:``port``; check the flow is offloaded, counted
    and kept alive while it runs; return the pair as seen mid-transfer."""
    argv = ns_exec(ns, "iperf3", "-c", str(host), "-p", str(port), "-t", str(SECONDS), "-J")
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as client:
        pair = wait_for(lambda: offloaded(want), 5, f"both directions of {want} offloaded")
        key, entry, _, back = pair
        match = ("--orig-port-src", str(key.sport), "--orig-dst", str(key.daddr))
        ids = conntrack_id(*match)
        assert len(ids) == 1, ids
        time.sleep(SECONDS - 2.5)  # past the 5 s established timeout
        later = wait_for(lambda: offloaded(want), 2, "the pair still offloaded")
        assert later[0] == key and later[1].packets > entry.packets + 1000
        assert later[3].packets > back.packets + 100, "acks back on the fast path too"
        assert conntrack_id(*match) == ids, "the conntrack entry was kept alive"
        out, _ = client.communicate(timeout=SECONDS + 20)
    assert client.returncode == 0, out
    report = json.loads(out)
    assert report["end"]["sum_received"]["bytes"] > 10_000_000
    return pair


def test_port_forward_lb_and_hairpin_flows_take_the_fast_path(servers: None) -> None:
    outside, inside = ifindex(GW.outside_if), ifindex(GW.inside_if)
    with agent(GW.netns, the_doc()):
        # the listener's backend must be healthy before the map sends it anything
        wait_for(lambda: backend_states() == {"healthy"}, 10, "the listener's backend healthy")

        # port forward: internet -> outside :5301 -> workload :5301
        key, entry, back_key, back = transfer(
            INET, OUTSIDE, FORWARD_PORT, FlowKey(outside, INET_LINK_IP, OUTSIDE, 0,
                                                 FORWARD_PORT, TCP))  # fmt: skip
        assert (entry.new_saddr, entry.new_daddr, entry.new_sport, entry.new_dport) == (
            INET_LINK_IP,
            WORKLOAD,
            key.sport,
            FORWARD_PORT,
        )
        assert entry.egress_ifindex == inside and back_key.ifindex == inside
        assert (back.new_saddr, back.new_sport, back.egress_ifindex) == (
            OUTSIDE,
            FORWARD_PORT,
            outside,
        )

        # load-balancer listener on the outside address: :9500 -> workload :5302
        key, entry, back_key, back = transfer(
            INET, OUTSIDE, LB_PORT, FlowKey(outside, INET_LINK_IP, OUTSIDE, 0, LB_PORT, TCP)
        )
        assert (entry.new_daddr, entry.new_dport, entry.egress_ifindex) == (
            WORKLOAD,
            LB_BACKEND_PORT,
            inside,
        )
        assert (back_key.saddr, back_key.sport, back.new_saddr, back.new_sport) == (
            WORKLOAD,
            LB_BACKEND_PORT,
            OUTSIDE,
            LB_PORT,
        )

        # hairpin: the workload to its own forward; masqueraded to the inside address
        key, entry, back_key, back = transfer(
            GW.workload_netns, OUTSIDE, FORWARD_PORT,
            FlowKey(inside, WORKLOAD, OUTSIDE, 0, FORWARD_PORT, TCP))  # fmt: skip
        assert (entry.new_saddr, entry.new_daddr, entry.new_dport) == (
            INSIDE,
            WORKLOAD,
            FORWARD_PORT,
        )
        assert entry.egress_ifindex == back.egress_ifindex == back_key.ifindex == inside
        assert (back_key.daddr, back.new_saddr, back.new_daddr) == (INSIDE, OUTSIDE, WORKLOAD)
        assert entry.flags & back.flags & FLOW_F_DENY_TRANSLATED, "hairpin: deny translated"

        # a listener on the inside address, the workload its client: hairpin as well
        key, entry, back_key, back = transfer(
            GW.workload_netns, INSIDE, INSIDE_LB_PORT,
            FlowKey(inside, WORKLOAD, INSIDE, 0, INSIDE_LB_PORT, TCP))  # fmt: skip
        assert (entry.new_saddr, entry.new_daddr, entry.new_dport, entry.egress_ifindex) == (
            INSIDE,
            WORKLOAD,
            LB_BACKEND_PORT,
            inside,
        )
        assert (back.new_saddr, back.new_sport, back.new_daddr) == (INSIDE, INSIDE_LB_PORT,
                                                                   WORKLOAD)  # fmt: skip
        assert entry.flags & back.flags & FLOW_F_DENY_TRANSLATED
