"""``logging.flow_logs`` and ``logging.firewall_logs``: the gateway's flow and firewall logs.

Flow logs follow AWS VPC Flow Logs version 5 (field order of "Flow log records" in the
Amazon VPC user guide), one record per conntrack entry when it ends; firewall logs are
the packets the nftables deny rules drop, read over NFLOG.  Both are local JSON-lines
files with size-based rotation (:mod:`control.flowlog`, :mod:`control.firewall_log`).
``true``/``false`` stand for ``{"enabled": true/false}``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from control.config.types import StrictModel


def _bool_shorthand(value: Any) -> Any:
    return {"enabled": value} if isinstance(value, bool) else value


class FlowLogs(StrictModel):
    """Flow log records from conntrack DESTROY events (accounting turned on)."""

    enabled: bool = False
    sampling: int = Field(
        default=1, ge=1, le=1_000_000, description="log one flow in N (1: every flow)"
    )
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096, le=1 << 40)
    keep: int = Field(default=5, ge=1, le=100, description="rotated files kept")
    queue: int = Field(default=65536, ge=16, le=4_194_304, description="records buffered")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _bool_shorthand(value)


class FirewallLogs(StrictModel):
    """Packets dropped by the deny rules, logged by nftables to NFLOG ``group``."""

    enabled: bool = False
    group: int = Field(default=7, ge=1, le=65535, description="NFLOG group")
    rate_per_second: int = Field(default=100, ge=1, le=100_000)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096, le=1 << 40)
    keep: int = Field(default=5, ge=1, le=100, description="rotated files kept")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _bool_shorthand(value)
