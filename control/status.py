"""What each instance on this host reports: the agent's state file plus the data-plane
counters read straight from the pinned maps (they exist while the agent is down).

``spectra status``, the config API's ``/v1/status`` and ``/metrics`` all read this;
``spectra alerts`` and ``GET /v1/alerts`` read each instance's alert store
(:mod:`control.alerts`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from control.agent import LOG_ROOT, RUN_ROOT, netns_inode, read_state
from control.alerts import instance_alerts


def xdp_counters(instance: str) -> dict[str, Any] | None:
    from xdp import Dataplane, loader

    try:
        if not loader.is_pinned(loader.pin_dir_for(instance)):
            return None
        dp = Dataplane.adopt(instance)
    except OSError as exc:
        return {"error": f"cannot read the pinned maps: {exc}"}
    try:
        return dict(dp.counters())
    finally:
        dp.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _flat_counters(st: dict[str, Any]) -> dict[str, int]:
    """Numeric counters for Prometheus: per-reason packets/bytes, table, offload,
    conntrack (size, fill, insert_failed, drop, early_drop)."""
    flat: dict[str, int] = {}
    xdp = st.get("xdp_counters") or {}
    for reason, c in xdp.get("reasons", {}).items():
        flat[f"xdp_{reason.lower()}_packets"] = c["packets"]
        flat[f"xdp_{reason.lower()}_bytes"] = c["bytes"]
    for key in ("flows", "flow_capacity"):
        if key in xdp:
            flat[f"xdp_{key}"] = xdp[key]
    for section in ("offload", "conntrack", "inspection"):
        for key, value in st.get(section, {}).items():
            if isinstance(value, int) and not isinstance(value, bool):
                flat[f"{section}_{key}"] = value
    return flat


def links(st: dict[str, Any]) -> dict[str, dict[str, int]]:
    """rx/tx counters of the instance's inside and outside interfaces, read only from
    the agent's own network namespace (elsewhere the same name is another interface)."""
    interfaces = st.get("interfaces")
    if not isinstance(interfaces, dict) or not st.get("netns") or st["netns"] != netns_inode():
        return {}
    from control.aws.cloudwatch import link_counters

    return {role: link_counters(str(name)) for role, name in interfaces.items()}


def instance_status(instance: str) -> dict[str, Any] | None:
    st = read_state(instance)
    if st is None:
        return None
    st["agent_running"] = _pid_alive(int(st["pid"]))
    st["links"] = links(st)
    st["xdp_counters"] = xdp_counters(instance)
    st["counters"] = _flat_counters(st)
    return st


def host_status() -> dict[str, Any]:
    """Every instance that ran on this host (the status provider of the config API)."""
    names = sorted(p.name for p in RUN_ROOT.glob("*") if p.is_dir())
    instances = {n: s for n in names if (s := instance_status(n)) is not None}
    return {"instances": instances}


def host_alerts(limit: int = 100, sid: int | None = None) -> dict[str, Any]:
    """Every instance's newest alerts (the alerts provider of the config API)."""
    names = sorted(p.name for p in RUN_ROOT.glob("*") if p.is_dir())
    return {"instances": {n: instance_alerts(RUN_ROOT / n, limit, sid) for n in names}}


def host_flow_files() -> dict[str, Path]:
    """The current flow log of every instance that ran on this host (``GET /v1/flows``)."""
    from control.steps.traffic_logs import FLOW_FILE

    return {p.name: p / FLOW_FILE for p in sorted(LOG_ROOT.glob("*")) if p.is_dir()}
