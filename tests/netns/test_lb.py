"""The L4 load balancer driven by the document through the agent of ``cs-gw-a``.

Three backends (weights 1, 2, 3) listen on extra addresses of the workload namespace
``cs-ws-a``, each with a separate health-check port. From the internet namespace:
3,000 connections to the outside address spread within 10 % of the weights; a backend
whose health port dies gets no new connection two check intervals later while its
established connection keeps echoing, and comes back after two good checks. From the
workload (inside): hairpin to the outside address and to an inside-address listener,
the backend seeing the gateway's inside address as the client.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from control.agent import read_state
from perf.lab import TOPOLOGY, ns_exec
from tests.netns.helpers import agent, document, sh, wait_for
from tests.netns.test_proxy_squid import applied, write

GW = TOPOLOGY.gateway("a")
PORT, HEALTH, INSIDE_PORT = 9000, 9001, 9100
BACKENDS = {"b1": ("10.0.1.21", 1), "b2": ("10.0.1.22", 2), "b3": ("10.0.1.23", 3)}
INTERVAL = 1


def backend(name: str) -> dict[str, Any]:
    address, weight = BACKENDS[name]
    return {"address": address, "port": PORT, "weight": weight}


def lb_doc() -> dict[str, Any]:
    check = {"port": HEALTH, "interval_seconds": INTERVAL, "timeout_seconds": 0.5}
    listeners = [
        {"name": "web", "port": PORT, "backends": [backend(n) for n in BACKENDS],
         "health_check": check},
        {"name": "internal", "address": "inside", "port": INSIDE_PORT, "algorithm": "source",
         "backends": [backend("b1")], "health_check": check},
    ]  # fmt: skip
    return document(interfaces={"data_plane": "kernel"},
                    load_balancer={"enabled": True, "listeners": listeners})  # fmt: skip


def start(ns: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(ns_exec(ns, sys.executable, "-m", "tests.netns.lb_backend", *args),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    assert first in ("listening", "ready"), f"{args}: {first!r}"
    return proc


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=5)
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


@pytest.fixture
def backends(lab: Any) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """Traffic servers on :PORT and health servers on :HEALTH (keyed ``<name>/health``)."""
    procs: dict[str, subprocess.Popen[str]] = {}
    for address, _ in BACKENDS.values():
        sh(GW.workload_netns, "ip", "addr", "add", f"{address}/24", "dev", GW.workload_if)
    try:
        for name, (address, _) in BACKENDS.items():
            procs[name] = start(GW.workload_netns, "serve", name, address, str(PORT))
            procs[f"{name}/health"] = start(GW.workload_netns, "serve", name, address, str(HEALTH))
        yield procs
    finally:
        for proc in procs.values():
            stop(proc)
        for address, _ in BACKENDS.values():
            sh(GW.workload_netns, "ip", "addr", "del", f"{address}/24", "dev", GW.workload_if)


def spread(ns: str, host: str, port: int, n: int) -> dict[str, Any]:
    proc = sh(ns, sys.executable, "-m", "tests.netns.lb_backend", "spread", host, str(port),
              str(n), timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def states() -> dict[str, str]:
    lb = (read_state(GW.netns) or {}).get("load_balancer", {})
    backends = lb.get("listeners", {}).get("web", {}).get("backends", {})
    return {key.partition(":")[0]: b["state"] for key, b in backends.items()}


def test_load_balancer(backends: dict[str, subprocess.Popen[str]]) -> None:
    with agent(GW.netns, lb_doc()):
        try:
            run_lb_checks(backends)
        finally:  # the table goes with the section
            applied(write(document(interfaces={"data_plane": "kernel"})))
            assert sh(GW.netns, "nft", "list", "table", "ip", "spectra_lb").returncode != 0


def run_lb_checks(backends: dict[str, subprocess.Popen[str]]) -> None:
    every = {address for address, _ in BACKENDS.values()}
    wait_for(lambda: set(states()) == every and set(states().values()) == {"healthy"}, 10,
             "every backend healthy")  # fmt: skip
    assert "load_balancer" not in (read_state(GW.netns) or {})["not_yet_rendered"]

    # 3,000 connections from the internet spread by weight (1:2:3) within 10 %
    result = spread(TOPOLOGY.inet_netns, GW.outside_ip, PORT, 3000)
    counts = result["counts"]
    assert sum(counts.values()) == 3000 and set(counts) == set(BACKENDS), counts
    for name, (_, weight) in BACKENDS.items():
        expected = 3000 * weight / 6
        assert abs(counts[name] - expected) <= 0.1 * expected, counts
    assert result["peers"]["b1"] == [GW.inet_cidr.split("/")[0]]  # no SNAT from outside

    # b2 fails its checks: no new connection two intervals later; its flow goes on
    held = start(TOPOLOGY.inet_netns, "hold", GW.outside_ip, str(PORT), "b2")
    try:
        assert held.stdin is not None and held.stdout is not None
        stop(backends["b2/health"])
        time.sleep(2 * INTERVAL)
        after = spread(TOPOLOGY.inet_netns, GW.outside_ip, PORT, 300)["counts"]
        assert "b2" not in after and sum(after.values()) == 300, after
        assert states()[BACKENDS["b2"][0]] == "unhealthy"
        held.stdin.write("still here\n")
        held.stdin.flush()
        assert held.stdout.readline().strip() == "still here"
    finally:
        stop(held)

    # hairpin: workloads inside reach the outside address and an inside listener
    inside = spread(GW.workload_netns, GW.outside_ip, PORT, 30)
    assert set(inside["counts"]) == {"b1", "b3"}, inside
    assert {p for peers in inside["peers"].values() for p in peers} == {GW.inside_ip}
    internal = spread(GW.workload_netns, GW.inside_ip, INSIDE_PORT, 5)
    assert internal["counts"] == {"b1": 5} and internal["peers"]["b1"] == [GW.inside_ip]

    # b2 passes two checks again: back in the set
    address = BACKENDS["b2"][0]
    backends["b2/health"] = start(GW.workload_netns, "serve", "b2", address, str(HEALTH))
    wait_for(lambda: states()[address] == "healthy", 4 * INTERVAL, "b2 healthy again")
    back = spread(TOPOLOGY.inet_netns, GW.outside_ip, PORT, 60)["counts"]
    assert back.get("b2", 0) > 0, back
