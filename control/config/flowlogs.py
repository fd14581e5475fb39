"""``logging.flow_logs`` and ``logging.firewall_logs``: the gateway's flow and firewall logs.

Flow logs follow AWS VPC Flow Logs version 5 (field order of "Flow log records" in the
Amazon VPC user guide), one record per conntrack entry when it ends; firewall logs are
the packets the deny rules drop (nftables over NFLOG, XDP through a rate-limited
ring buffer), joined by the inspection engine's alerts and drops.  Both are local JSON-lines
files with size-based rotation (:mod:`control.flowlog`, :mod:`control.firewall_log`),
and, when ``cloudwatch_log_group`` or ``s3_bucket`` is set, shipped to CloudWatch Logs
and/or S3 by :mod:`control.logship` (needs ``spectra run --aws``).
``true``/``false`` stand for ``{"enabled": true/false}``.
"""

from __future__ import annotations

from typing import Any, Self

from pydantic import Field, model_validator

from control.config.types import StrictModel


def _bool_shorthand(value: Any) -> Any:
    return {"enabled": value} if isinstance(value, bool) else value


# CloudWatch Logs group names: 1-512 of [.-_/#A-Za-z0-9] (CreateLogGroup); S3 bucket
# names: 3-63 of lowercase letters, digits, dots and hyphens ("Bucket naming rules")
LOG_GROUP = r"^[.\-_/#A-Za-z0-9]{1,512}$"
BUCKET = r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$"
PREFIX = r"^[A-Za-z0-9!_.*'()\-]+(/[A-Za-z0-9!_.*'()\-]+)*$"


class Shipping(StrictModel):
    """Where records are shipped besides the local file (off by default)."""

    enabled: bool = False
    cloudwatch_log_group: str | None = Field(
        default=None, pattern=LOG_GROUP, description="CloudWatch Logs group (stream: instance)"
    )
    s3_bucket: str | None = Field(default=None, pattern=BUCKET, description="S3 bucket")
    s3_prefix: str = Field(default="spectra", pattern=PREFIX, max_length=256)
    s3_interval: int = Field(default=300, ge=10, le=86_400, description="seconds per object")
    s3_max_bytes: int = Field(default=16 << 20, ge=1 << 16, le=1 << 30, description="per object")

    def ships(self) -> bool:
        return self.enabled and bool(self.cloudwatch_log_group or self.s3_bucket)

    @model_validator(mode="after")
    def _effective(self) -> Self:
        # values, not the fields set: a stored document is dumped with every default
        if not self.enabled:
            for name in ("cloudwatch_log_group", "s3_bucket"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} needs enabled: true (nothing is logged to ship)")
        if self.s3_bucket is None:
            for name in ("s3_prefix", "s3_interval", "s3_max_bytes"):
                if getattr(self, name) != type(self).model_fields[name].default:
                    raise ValueError(f"{name} needs s3_bucket (no S3 shipping without it)")
        return self


class FlowLogs(Shipping):
    """Flow log records from conntrack DESTROY events (accounting turned on)."""

    sampling: int = Field(
        default=1, ge=1, le=1_000_000, description="log one flow in N (1: every flow)"
    )
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096, le=1 << 40)
    keep: int = Field(default=5, ge=1, le=100, description="rotated files kept")
    queue: int = Field(default=65536, ge=16, le=4_194_304, description="records buffered")
    reliable: bool = Field(
        default=True,
        description=(
            "the kernel keeps a DESTROY event it could not deliver and delivers it again "
            "(no record lost; a lagging log holds ended entries in the conntrack table); "
            "false: events the socket cannot take are lost and counted"
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _bool_shorthand(value)


class FirewallLogs(Shipping):
    """Packets dropped by the deny rules, logged by nftables to NFLOG ``group``, and
    (``inspection``) the inspection engine's alerts and drops: one stream."""

    group: int = Field(default=7, ge=1, le=65535, description="NFLOG group")
    rate_per_second: int = Field(default=100, ge=1, le=100_000)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096, le=1 << 40)
    keep: int = Field(default=5, ge=1, le=100, description="rotated files kept")
    inspection: bool = Field(
        default=True,
        description="also the inspection engine's alerts and drops (one alert/firewall stream)",
    )
    xdp_samples_per_second: int = Field(
        default=100,
        ge=0,
        le=100_000,
        description="XDP deny-list drops logged per second and CPU (0: per-rule counters only)",
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return _bool_shorthand(value)
