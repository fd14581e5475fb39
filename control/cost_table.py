"""The dated price table behind ``spectra cost``: its schema, loading and overrides.

The shipped table (``control/cost_prices.json``, package data) holds, per region, the
hourly and per-GB prices of AWS NAT Gateway (https://aws.amazon.com/vpc/pricing/), AWS
Network Firewall (https://aws.amazon.com/network-firewall/pricing/), Gateway Load Balancer
and its endpoints (https://aws.amazon.com/elasticloadbalancing/pricing/ and
https://aws.amazon.com/privatelink/pricing/), gp3 volumes and cross-AZ data transfer, and
per instance type its vCPU count, network bandwidth (baseline and burst, from "Amazon EC2
instance network bandwidth" in the EC2 User Guide) and us-east-1 On-Demand price. Every
price carries its basis: ``given``, ``published``, ``estimated`` or ``override``.

A user's ``--prices FILE`` is merged over the shipped table (objects merge key by key, any
other value replaces) and the result is validated as a whole, so a partial override works
and a bad field is named with what is accepted before anything is computed.
"""

from __future__ import annotations

import json
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from control.config.errors import FieldError

Basis = Literal["given", "published", "estimated", "override"]
PRICES_RESOURCE = "cost_prices.json"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Model):
    """A price in US dollars and where it comes from."""

    usd: Decimal = Field(ge=0)
    basis: Basis


class Ratio(_Model):
    """A dimensionless factor (a discount, a regional multiplier) and where it comes from."""

    value: Decimal = Field(ge=0)
    basis: Basis


class Discount(Ratio):
    """A fraction taken off the On-Demand price, below 1."""

    value: Decimal = Field(ge=0, lt=1)


class InstanceType(_Model):
    """One EC2 instance type: size, network bandwidth, us-east-1 price, typical Spot discount."""

    vcpu: int = Field(ge=1)
    baseline_gbps: Decimal = Field(gt=0)
    burst_gbps: Decimal = Field(gt=0)
    burstable: bool
    on_demand_hour: Price
    spot_discount: Discount


class NatGatewayPrices(_Model):
    """NAT Gateway: per gateway-hour (one per AZ) and per GB processed."""

    hour: Price
    gb: Price


class NetworkFirewallPrices(_Model):
    """Network Firewall: per endpoint-hour (one per AZ) and per GB processed."""

    endpoint_hour: Price
    gb: Price


class GwlbPrices(_Model):
    """Gateway Load Balancer: endpoint-hour and endpoint GB, load balancer hour, GLCU-hour."""

    endpoint_hour: Price
    endpoint_gb: Price
    hour: Price
    glcu_hour: Price


class RegionPrices(_Model):
    """Prices of one region; ``on_demand_hour`` entries win over ``instance_factor``."""

    instance_factor: Ratio
    on_demand_hour: dict[str, Price] = {}
    ebs_gp3_gb_month: Price
    nat_gateway: NatGatewayPrices
    network_firewall: NetworkFirewallPrices
    gwlb: GwlbPrices
    cross_az_gb_each_way: Price


class PriceTable(_Model):
    """The whole table: its date, a note on its sources, instance types and regions."""

    as_of: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$")
    currency: Literal["USD"]
    note: str
    instances: dict[str, InstanceType] = Field(min_length=1)
    regions: dict[str, RegionPrices] = Field(min_length=1)

    @model_validator(mode="after")
    def _known_types(self) -> PriceTable:
        for name, region in self.regions.items():
            unknown = sorted(set(region.on_demand_hour) - set(self.instances))
            if unknown:
                raise ValueError(
                    f"regions[{name!r}].on_demand_hour names unknown instance types {unknown}; "
                    "add them under instances first"
                )
        return self


class PriceTableError(ValueError):
    """The price table (shipped or merged with an override) is invalid; ``errors`` say where."""

    def __init__(self, source: str, errors: list[FieldError]) -> None:
        self.source = source
        self.errors = errors
        lines = "; ".join(
            f"{e['path']}: {e['message']}"
            + ("" if e["value"] is None else f" (got {e['value']!r})")
            for e in errors
        )
        super().__init__(f"{source}: invalid price table: {lines}")


def merge(base: Any, override: Any) -> Any:
    """``override`` over ``base``: objects merge key by key, anything else replaces.

    A price object given without ``basis`` (``{"usd": 0.05}``) is marked ``override``.
    """
    if isinstance(override, dict):
        out = dict(base) if isinstance(base, dict) else {}
        for key, value in override.items():
            out[key] = merge(out.get(key), value)
        if "usd" in override and "basis" not in override:
            out["basis"] = "override"
        return out
    return override


def _read_json(text: str, source: str) -> Any:
    try:
        return json.loads(text, parse_float=Decimal)
    except ValueError as exc:
        raise PriceTableError(
            source, [FieldError(path="(file)", value=None, message=f"expected JSON: {exc}")]
        ) from None


def shipped_data() -> Any:
    """The shipped table as plain JSON data (floats as :class:`~decimal.Decimal`)."""
    text = resources.files("control").joinpath(PRICES_RESOURCE).read_text(encoding="utf-8")
    return _read_json(text, PRICES_RESOURCE)


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model holding the field at ``loc`` (dict keys such as instance types skipped)."""
    current: Any = PriceTable
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = field.annotation
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return None
    if get_origin(current) is dict:
        return None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        key = str(part)
        out += f".{key}" if key.isidentifier() else f"[{json.dumps(key)}]"
    return out.lstrip(".")


def _field_errors(exc: ValidationError) -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        message: str = err["msg"]
        if err["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            accepted = ", ".join(parent.model_fields) if parent else "none"
            message = f"unknown field; accepted fields here: {accepted}"
        elif err["type"] == "literal_error":
            message = f"expected {err['ctx']['expected']}"
        elif err["type"] == "missing":
            message = "required field is missing"
        value = None if err["type"] == "missing" else err["input"]
        if isinstance(value, dict | list):
            value = None  # the path says where; echoing a whole object helps nobody
        errors.append(FieldError(path=_path(loc), value=value, message=message))
    return errors


def validate_table(data: Any, source: str) -> PriceTable:
    """Validate table data; raise :class:`PriceTableError` naming every bad field."""
    if not isinstance(data, dict):
        raise PriceTableError(
            source,
            [FieldError(path="(file)", value=type(data).__name__, message="expected an object")],
        )
    try:
        return PriceTable.model_validate(data)
    except ValidationError as exc:
        raise PriceTableError(source, _field_errors(exc)) from None


def load_prices(override: Path | None = None) -> PriceTable:
    """The shipped table, with ``override`` (a JSON file, possibly partial) merged over it."""
    data = shipped_data()
    source = PRICES_RESOURCE
    if override is not None:
        source = f"{override} merged over {PRICES_RESOURCE}"
        try:
            text = override.read_text(encoding="utf-8")
        except OSError as exc:
            raise PriceTableError(
                str(override), [FieldError(path="(file)", value=None, message=str(exc))]
            ) from None
        patch = _read_json(text, str(override))
        if not isinstance(patch, dict):
            raise PriceTableError(
                str(override),
                [
                    FieldError(
                        path="(file)", value=type(patch).__name__, message="expected an object"
                    )
                ],
            )
        data = merge(data, patch)
    return validate_table(data, source)
