"""Where an operator's tool reads what a gateway's agent reports about itself.

A live resize (:mod:`control.aws.resize`) must know that a new instance joined its AZ as
a healthy standby whose conntrack sync caught up, and that it leads after a hand-over.
Only the agent knows: its state (``aws``: role, lease, takeover; ``conntrack_sync``:
the daemon and its caches) is what ``/v1/status`` of the config API serves and what
``spectra status`` reads from the state files. :class:`GatewayStatus` is that read, by
instance id; :class:`ApiStatus` asks each instance's config API (on EC2: one agent per
instance, at the inside ENI's private address), :class:`LocalStatus` reads the state
files of the agents on this host (several instances on one host: the VPC lab).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from control.agent import RUN_ROOT


class GatewayStatus(Protocol):
    """The state an instance's agent reports, or ``None`` when it does not answer."""

    def state(self, instance_id: str) -> dict[str, Any] | None: ...


def _match(instances: Any, instance_id: str) -> dict[str, Any] | None:
    """The entry of ``instances`` (name -> agent state) whose AWS side is ``instance_id``."""
    if not isinstance(instances, dict):
        return None
    for state in instances.values():
        if isinstance(state, dict) and (state.get("aws") or {}).get("instance_id") == instance_id:
            return state
    return None


class LocalStatus:
    """The agents' state files on this host (``/run/spectra/<instance>/status.json``)."""

    def __init__(self, root: Path = RUN_ROOT) -> None:
        self.root = root

    def state(self, instance_id: str) -> dict[str, Any] | None:
        states: dict[str, Any] = {}
        for path in sorted(self.root.glob("*/status.json")):
            try:
                states[path.parent.name] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # being rewritten: the next poll reads it
        return _match(states, instance_id)


class ApiStatus:
    """``GET /v1/status`` of the instance's own config API. ``address(instance_id)``
    gives the host to ask (its inside ENI's private address); ``token`` is an API token
    with the viewer role or more."""

    def __init__(
        self,
        address: Callable[[str], str | None],
        token: str | None,
        *,
        port: int = 8080,
        timeout_s: float = 3.0,
    ) -> None:
        self._address = address
        self._token = token
        self.port = port
        self.timeout_s = timeout_s

    def state(self, instance_id: str) -> dict[str, Any] | None:
        host = self._address(instance_id)
        if host is None:
            return None
        request = urllib.request.Request(f"http://{host}:{self.port}/v1/status")
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                data = json.loads(answer.read())
        except (OSError, ValueError, urllib.error.URLError):
            return None  # not up yet, or restarting: the caller polls
        return _match(data.get("instances") if isinstance(data, dict) else None, instance_id)
