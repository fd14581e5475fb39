"""Lab lifecycle: up is idempotent, down leaves the host exactly as it found it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from perf.lab import BPF_PIN_ROOT, TOPOLOGY, Lab


def _host_snapshot() -> tuple[str, str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True)
    # Link states of pre-existing host interfaces may flap; names are what the lab owns.
    names = "\n".join(sorted(line.split()[0] for line in links.stdout.splitlines()))
    return netns.stdout, names


def test_up_twice_then_down_restores_host(lab_session: Any) -> None:
    """(Holds the session's lab lock; later tests re-up the lab.)"""
    lab = Lab()
    lab.down()
    lab.down()  # down with nothing up is fine
    before = _host_snapshot()
    first = lab.up()
    second = lab.up()
    assert first["up"] and second["up"]
    assert first["namespaces"].keys() == second["namespaces"].keys()
    assert set(first["namespaces"]) == set(TOPOLOGY.namespaces)
    assert all(svc["running"] for svc in second["services"].values())
    pin = BPF_PIN_ROOT / TOPOLOGY.gateways[0].netns / "probe"
    pin.parent.mkdir(parents=True, exist_ok=True)
    lab.down()
    assert _host_snapshot() == before
    assert not Path(pin).exists()
    assert not lab.status()["up"]


def test_status_names_every_endpoint(lab_session: Any) -> None:
    lab = Lab()
    st = lab.up()
    for gw in TOPOLOGY.gateways:
        ifaces = st["namespaces"][gw.netns]["interfaces"]
        assert {gw.inside_if, gw.outside_if, gw.mgmt_if} <= set(ifaces)
        assert gw.outside_cidr in ifaces[gw.outside_if]["addresses"]
        assert st["gateways"][gw.az]["outside_ip"] == gw.outside_ip
    assert {"http", "iperf3", "sockperf", "udp_echo"} <= set(st["services"])
