"""Sections of the config document for operating the appliance.

``logging`` (level and format of every appliance process), ``metrics`` (Prometheus at
the config API's /metrics, CloudWatch export) and ``api`` (where the config API
listens, its body limit, and its bearer tokens).
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address
from typing import Literal

from pydantic import Field, model_validator

from control.config.flowlogs import FirewallLogs, FlowLogs
from control.config.issues import fail, unique_names
from control.config.types import Name, Port, Secret, StrictModel

_TOKEN_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class Logging(StrictModel):
    """Log level and format of every appliance process (the agent applies them to
    itself, the config API and AI gateway it runs, and the inspection engine it starts;
    ``python -m ai`` reads them from its file or the environment)."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    flow_logs: FlowLogs = FlowLogs()
    firewall_logs: FirewallLogs = FirewallLogs()


class Metrics(StrictModel):
    """Prometheus metrics (served by the API at /metrics) and CloudWatch export."""

    enabled: bool = True
    cloudwatch: bool = False
    cloudwatch_namespace: str = Field(default="CloudSpectra", pattern=r"^[A-Za-z0-9./_#:-]{1,255}$")


class ApiToken(StrictModel):
    """A bearer token of the config API, stored only as its hash (``sha256:<hex>``)."""

    name: Name
    role: Literal["read", "admin"]
    hash: Secret

    @model_validator(mode="after")
    def _hash_format(self) -> ApiToken:
        if not _TOKEN_HASH_RE.match(self.hash.get_secret_value()):
            raise fail(("hash",), None, "expected sha256:<64 hex digits> (see `spectra token new`)")
        return self


class Api(StrictModel):
    """The config API (this document's own endpoint)."""

    host: IPv4Address = IPv4Address("0.0.0.0")
    port: Port = 8080
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=16_777_216)
    tokens: list[ApiToken] = Field(default_factory=list, max_length=256)

    @model_validator(mode="after")
    def _names(self) -> Api:
        unique_names("tokens", [token.name for token in self.tokens])
        return self
