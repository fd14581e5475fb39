"""A restarted agent (``kill -9``, then started again on the same document) converges
to exactly the kernel state the first one left: the same nftables ruleset, iptables
inspection chains, policy rules and routes, tc filters and XDP programs — nothing
applied twice, nothing left out."""

from __future__ import annotations

import difflib
import os
import re
import signal
from typing import Any

from control.agent import read_state
from perf.lab import TOPOLOGY
from tests.netns.helpers import agent, document, sh, wait_for

GW = TOPOLOGY.gateway("a")
DOC = document(
    rules={"entries": [{"action": "deny", "dst": "192.0.2.0/24", "proto": "udp",
                        "ports": [53, 53]}]},
    port_forwards=[{"proto": "tcp", "port": 8022, "to_address": GW.workload_ip,
                    "to_port": 22}],
    inspection={"enabled": True, "engine": "builtin", "fail_open": True,
                "selectors": [{"proto": "tcp", "ports": [80, 80]}],
                "rules": ['alert http any any -> any any (msg:"seen"; sid:7101; rev:1;)']},
)  # fmt: skip
# What legitimately differs between two runs: counters, kernel object ids, handles
# the kernel numbers afresh.
VOLATILE = (
    (re.compile(r"packets \d+ bytes \d+"), "packets N bytes N"),
    (re.compile(r"\[\d+:\d+\]"), "[N:N]"),
    (re.compile(r"\b(id|prog/xdp id) \d+"), r"\1 N"),
    (re.compile(r"# handle \d+"), "# handle N"),
    (re.compile(r"^#.*$", re.M), ""),  # iptables-save's timestamp lines
)


def kernel_state() -> dict[str, str]:
    netns = GW.netns
    commands: dict[str, tuple[str, ...]] = {
        "nft": ("nft", "-a", "list", "ruleset"),
        "iptables": ("iptables-save",),
        "rules": ("ip", "rule"),
        "routes": ("ip", "route", "show", "table", "all"),
    }
    for dev in (GW.inside_if, GW.outside_if):
        commands[f"link {dev}"] = ("ip", "-d", "link", "show", "dev", dev)
        for hook in ("ingress", "egress"):
            commands[f"tc {dev} {hook}"] = ("tc", "filter", "show", "dev", dev, hook)
    state = {}
    for name, argv in commands.items():
        text = sh(netns, *argv).stdout
        for pattern, repl in VOLATILE:
            text = pattern.sub(repl, text)
        state[name] = "\n".join(line for line in text.splitlines() if line.strip())
    # A table re-created by the second agent is listed after the others: compare the
    # tables, not their order.
    state["nft"] = "\n".join(sorted(re.split(r"\n(?=table )", state["nft"])))
    return state


def test_restarted_agent_converges_to_the_same_kernel_state(lab_status: Any) -> None:
    with agent(GW.netns, DOC):
        first = kernel_state()
        assert "8022" in first["nft"] and "NFQUEUE" in first["iptables"]
        assert "prog/xdp" in first[f"link {GW.inside_if}"]
        os.kill(read_state(GW.netns)["pid"], signal.SIGKILL)
    with agent(GW.netns, DOC):
        wait_for(lambda: _converged_again(), 10, "the second agent to converge")
        second = kernel_state()
    for name in first:
        diff = difflib.unified_diff(
            first[name].splitlines(), second[name].splitlines(), lineterm=""
        )
        assert second[name] == first[name], f"{name} differs after the restart:\n" + "\n".join(diff)


def _converged_again() -> Any:
    st = read_state(GW.netns)
    return st and st["converged"]
