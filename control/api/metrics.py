"""Prometheus text exposition (format 0.0.4) of the config API's own counters.

Hand-written to avoid a dependency: a few counters and gauges, labels escaped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass(slots=True)
class ApiMetrics:
    """Counters the API updates as it serves requests."""

    requests: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    writes: Counter[str] = field(default_factory=Counter)
    desired_version: int = 0

    def render(self, extra_gauges: dict[str, float] | None = None) -> str:
        lines = [
            "# HELP spectra_api_requests_total API requests by method, route and status.",
            "# TYPE spectra_api_requests_total counter",
        ]
        for (method, route, status), count in sorted(self.requests.items()):
            lines.append(
                f'spectra_api_requests_total{{method="{_escape(method)}",'
                f'route="{_escape(route)}",status="{status}"}} {count}'
            )
        lines += [
            "# HELP spectra_config_writes_total Config writes by outcome.",
            "# TYPE spectra_config_writes_total counter",
        ]
        for outcome in ("committed", "conflict", "invalid"):
            lines.append(
                f'spectra_config_writes_total{{outcome="{outcome}"}} {self.writes[outcome]}'
            )
        lines += [
            "# HELP spectra_config_desired_version Newest config version in the store.",
            "# TYPE spectra_config_desired_version gauge",
            f"spectra_config_desired_version {self.desired_version}",
        ]
        family = ""
        for name, value in sorted((extra_gauges or {}).items()):
            base = name.partition("{")[0]  # one TYPE line per family, before its samples
            if base != family:
                lines.append(f"# TYPE {base} gauge")
                family = base
            lines.append(f"{name} {value}")
        return "\n".join(lines) + "\n"
