"""Monthly cost of the appliance against AWS NAT Gateway, Network Firewall and GWLB.

Pure functions over a :class:`~control.cost_table.PriceTable`: :func:`estimate` prices
every option line by line for a month of 730 hours (AWS's billing month), solves the
break-even traffic of the appliance against each AWS option exactly (rational
arithmetic), and checks the traffic asked for against the instance's bandwidth.

Models (docs/cost.md has the formulas):

* appliance: ``azs x instances_per_az`` instances (the leader and its standbys all run and
  are all billed), On-Demand or Spot (On-Demand less the table's typical Spot discount),
  plus a Marketplace fee per instance-hour and a gp3 root volume each; no per-GB charge.
* NAT Gateway (https://aws.amazon.com/vpc/pricing/): one gateway per AZ, per hour and per
  GB processed.
* Network Firewall (https://aws.amazon.com/network-firewall/pricing/): one endpoint per
  AZ, per hour and per GB; the NAT Gateway it needs for egress is waived one-to-one.
* GWLB (https://aws.amazon.com/elasticloadbalancing/pricing/): one endpoint per AZ (hour
  and GB) and one load balancer (hour and GLCU-hours, 1 GLCU = 1 GB processed per hour);
  the AWS fabric only, the appliances behind it are extra, so this is a lower bound.
* cross-AZ data ($ per GB each way) when the workloads sit in more AZs than the gateways:
  the same in every option, so it moves totals but not break-even points.

Bandwidth ("Amazon EC2 instance network bandwidth", EC2 User Guide): traffic to the
internet is capped at 5 Gbit/s for instances with fewer than 32 vCPUs and at half the
instance bandwidth (at least 5 Gbit/s) from 32 up; "up to" bandwidth is a burst on network
I/O credits, only the baseline is sustained. One instance per AZ (the leader) carries that
AZ's traffic.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Literal

from control.cost_table import Basis, InstanceType, Price, PriceTable

HOURS_PER_MONTH = Decimal(730)
SECONDS_PER_MONTH = HOURS_PER_MONTH * 3600
GB_BITS = Decimal(8 * 10**9)  # 1 GB = 10^9 bytes
INTERNET_CAP_GBPS = Decimal(5)
FULL_INTERNET_VCPUS = 32
OPTIONS = ("appliance", "nat_gateway", "network_firewall", "gwlb")


class CostInputError(ValueError):
    """An input to the estimate is out of range; names the field and what is accepted."""

    def __init__(self, field: str, value: object, accepted: str) -> None:
        self.field = field
        self.value = value
        self.accepted = accepted
        super().__init__(f"{field}: {value!r} is not accepted; {accepted}")


@dataclass(frozen=True, slots=True)
class CostInputs:
    """What the user asks about: where, which instances, how many, how much traffic."""

    gb_month: Decimal
    region: str = "us-east-1"
    instance_type: str = "c7gn.large"
    azs: int = 2
    instances_per_az: int = 2
    spot: bool = False
    marketplace_fee_hour: Decimal = Decimal(0)
    peak_factor: Decimal = Decimal(3)
    workload_azs: int | None = None  # None: the same AZs as the gateways
    volume_gb: int = 8


@dataclass(frozen=True, slots=True)
class CostLine:
    """One billed item: ``quantity`` units at ``unit_usd``; ``per_gb`` units per GB of traffic."""

    item: str
    quantity: Decimal
    unit: str
    unit_usd: Decimal
    basis: Basis
    per_gb: Fraction = Fraction(0)  # 0: a fixed monthly item; exact (2/3 stays 2/3)

    @property
    def usd(self) -> Decimal:
        return self.quantity * self.unit_usd


@dataclass(frozen=True, slots=True)
class OptionCost:
    """One option's month: its lines, the fixed part and the price per GB of traffic."""

    key: str
    label: str
    lines: tuple[CostLine, ...]

    @property
    def monthly_usd(self) -> Decimal:
        return sum((line.usd for line in self.lines), Decimal(0))

    @property
    def fixed_usd(self) -> Decimal:
        return sum((line.usd for line in self.lines if not line.per_gb), Decimal(0))

    @property
    def usd_per_gb(self) -> Fraction:
        return sum((Fraction(line.unit_usd) * line.per_gb for line in self.lines), Fraction(0))


BreakEvenKind = Literal["above", "below", "always", "never"]


@dataclass(frozen=True, slots=True)
class BreakEven:
    """Where the appliance is cheaper than ``option``: above/below ``gb_month``, always, never."""

    option: str
    kind: BreakEvenKind
    gb_month: Fraction | None = None


@dataclass(frozen=True, slots=True)
class Bandwidth:
    """The traffic per AZ next to what the leader instance can carry to the internet."""

    average_gbps: Decimal
    peak_gbps: Decimal
    internet_cap_gbps: Decimal
    sustained_gbps: Decimal
    burst_gbps: Decimal
    capacity_gb_month: Decimal  # every AZ's leader at its sustained rate all month


@dataclass(frozen=True, slots=True)
class Warning_:
    """Something the user should know before trusting the number: a code and a sentence."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Estimate:
    """The whole answer for one :class:`CostInputs`."""

    inputs: CostInputs
    as_of: str
    options: tuple[OptionCost, ...]
    break_even: tuple[BreakEven, ...]
    bandwidth: Bandwidth
    warnings: tuple[Warning_, ...] = field(default=())


def _check(inputs: CostInputs, table: PriceTable) -> None:
    if inputs.region not in table.regions:
        raise CostInputError("region", inputs.region, f"expected one of {sorted(table.regions)}")
    if inputs.instance_type not in table.instances:
        close = difflib.get_close_matches(inputs.instance_type, table.instances, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise CostInputError(
            "instance_type",
            inputs.instance_type,
            f"{hint}known types: {', '.join(sorted(table.instances))} (add one with --prices)",
        )
    for name, value, least in (
        ("azs", inputs.azs, 1),
        ("instances_per_az", inputs.instances_per_az, 1),
        ("volume_gb", inputs.volume_gb, 1),
    ):
        if value < least:
            raise CostInputError(name, value, f"expected an integer >= {least}")
    if inputs.workload_azs is not None and inputs.workload_azs < inputs.azs:
        raise CostInputError(
            "workload_azs", inputs.workload_azs, f"expected an integer >= azs ({inputs.azs})"
        )
    for name, amount in (
        ("gb_month", inputs.gb_month),
        ("marketplace_fee_hour", inputs.marketplace_fee_hour),
    ):
        if not amount.is_finite() or amount < 0:
            raise CostInputError(name, str(amount), "expected a number >= 0")
    if not inputs.peak_factor.is_finite() or inputs.peak_factor < 1:
        raise CostInputError("peak_factor", str(inputs.peak_factor), "expected a number >= 1")


def instance_hour(table: PriceTable, region: str, instance_type: str) -> Price:
    """On-Demand $/h of ``instance_type`` in ``region``: explicit, else us-east-1 x factor."""
    prices = table.regions[region]
    if instance_type in prices.on_demand_hour:
        return prices.on_demand_hour[instance_type]
    base = table.instances[instance_type].on_demand_hour
    factor = prices.instance_factor
    basis = base.basis if factor.value == 1 else _weaker(base.basis, factor.basis)
    return Price(usd=base.usd * factor.value, basis=basis)


_BASIS_ORDER: tuple[Basis, ...] = ("given", "published", "override", "estimated")


def _weaker(a: Basis, b: Basis) -> Basis:
    return max(a, b, key=_BASIS_ORDER.index)


def cross_az_fraction(inputs: CostInputs) -> Fraction:
    """Share of the traffic whose workload sits in an AZ without a gateway."""
    workload = inputs.workload_azs or inputs.azs
    return Fraction(workload - inputs.azs, workload)


def _cross_az(inputs: CostInputs, table: PriceTable) -> tuple[CostLine, ...]:
    share = cross_az_fraction(inputs)
    if not share:
        return ()
    price = table.regions[inputs.region].cross_az_gb_each_way
    # charged on both sides of the AZ boundary: out of one AZ and into the other
    per_gb = share * 2
    return (
        CostLine(
            "cross-AZ data (both directions)",
            inputs.gb_month * per_gb.numerator / per_gb.denominator,
            "GB",
            price.usd,
            price.basis,
            per_gb,
        ),
    )


def _appliance(inputs: CostInputs, table: PriceTable) -> OptionCost:
    count = Decimal(inputs.azs * inputs.instances_per_az)
    hours = count * HOURS_PER_MONTH
    on_demand = instance_hour(table, inputs.region, inputs.instance_type)
    kind = table.instances[inputs.instance_type]
    if inputs.spot:
        discount = kind.spot_discount
        rate = on_demand.usd * (1 - discount.value)
        compute = CostLine(
            f"{inputs.instance_type} Spot (On-Demand less {(discount.value * 100).normalize():f}%)",
            hours,
            "instance-hour",
            rate,
            _weaker(on_demand.basis, discount.basis),
        )
    else:
        compute = CostLine(
            f"{inputs.instance_type} On-Demand",
            hours,
            "instance-hour",
            on_demand.usd,
            on_demand.basis,
        )
    volume = table.regions[inputs.region].ebs_gp3_gb_month
    lines = [
        compute,
        CostLine(
            f"gp3 root volume, {inputs.volume_gb} GB each",
            count * inputs.volume_gb,
            "GB-month",
            volume.usd,
            volume.basis,
        ),
    ]
    if inputs.marketplace_fee_hour:
        lines.append(
            CostLine(
                "Marketplace fee", hours, "instance-hour", inputs.marketplace_fee_hour, "override"
            )
        )
    count_s = f"{inputs.azs} AZ x {inputs.instances_per_az}"
    label = (
        f"appliance ({count_s} {inputs.instance_type}, {'Spot' if inputs.spot else 'On-Demand'})"
    )
    return OptionCost("appliance", label, (*lines, *_cross_az(inputs, table)))


def _nat_gateway(inputs: CostInputs, table: PriceTable) -> OptionCost:
    p = table.regions[inputs.region].nat_gateway
    hours = inputs.azs * HOURS_PER_MONTH
    lines = (
        CostLine("NAT Gateway, one per AZ", hours, "gateway-hour", p.hour.usd, p.hour.basis),
        CostLine(
            "NAT Gateway data processed", inputs.gb_month, "GB", p.gb.usd, p.gb.basis, Fraction(1)
        ),
    )
    return OptionCost("nat_gateway", "NAT Gateway", (*lines, *_cross_az(inputs, table)))


def _network_firewall(inputs: CostInputs, table: PriceTable) -> OptionCost:
    p = table.regions[inputs.region].network_firewall
    hours = inputs.azs * HOURS_PER_MONTH
    hour, gb = p.endpoint_hour, p.gb
    lines = (
        CostLine("firewall endpoint, one per AZ", hours, "endpoint-hour", hour.usd, hour.basis),
        CostLine("firewall data processed", inputs.gb_month, "GB", gb.usd, gb.basis, Fraction(1)),
    )
    label = "Network Firewall (+ NAT Gateway, waived 1:1)"
    return OptionCost("network_firewall", label, (*lines, *_cross_az(inputs, table)))


def _gwlb(inputs: CostInputs, table: PriceTable) -> OptionCost:
    p = table.regions[inputs.region].gwlb
    one = Fraction(1)
    lines = (
        CostLine(
            "GWLB endpoint, one per AZ",
            inputs.azs * HOURS_PER_MONTH,
            "endpoint-hour",
            p.endpoint_hour.usd,
            p.endpoint_hour.basis,
        ),
        CostLine(
            "GWLB endpoint data", inputs.gb_month, "GB", p.endpoint_gb.usd, p.endpoint_gb.basis, one
        ),
        CostLine("Gateway Load Balancer", HOURS_PER_MONTH, "LB-hour", p.hour.usd, p.hour.basis),
        CostLine(
            "GWLB capacity units (1 GB each)",
            inputs.gb_month,
            "GLCU-hour",
            p.glcu_hour.usd,
            p.glcu_hour.basis,
            one,
        ),
    )
    label = "GWLB + endpoints (AWS fabric only, appliances behind it extra)"
    return OptionCost("gwlb", label, (*lines, *_cross_az(inputs, table)))


def break_even(appliance: OptionCost, other: OptionCost) -> BreakEven:
    """Solve appliance(g) = other(g) for g, both linear in GB/month, exactly."""
    fixed = Fraction(appliance.fixed_usd) - Fraction(other.fixed_usd)
    slope = Fraction(other.usd_per_gb) - Fraction(appliance.usd_per_gb)
    if slope == 0:
        return BreakEven(other.key, "always" if fixed < 0 else "never")
    point = fixed / slope
    if slope > 0:  # the other option grows faster: the appliance wins above the point
        return (
            BreakEven(other.key, "always") if point <= 0 else BreakEven(other.key, "above", point)
        )
    return BreakEven(other.key, "never") if point <= 0 else BreakEven(other.key, "below", point)


def internet_cap(kind: InstanceType) -> Decimal:
    """Gbit/s an instance may send to the internet: 5 under 32 vCPUs, else max(half, 5)."""
    if kind.vcpu < FULL_INTERNET_VCPUS:
        return INTERNET_CAP_GBPS
    return max(kind.burst_gbps / 2, INTERNET_CAP_GBPS)


def bandwidth(inputs: CostInputs, kind: InstanceType) -> Bandwidth:
    """Average and peak Gbit/s per AZ against the leader's sustained and burst caps."""
    per_az = inputs.gb_month / inputs.azs
    average = per_az * GB_BITS / SECONDS_PER_MONTH / 10**9
    cap = internet_cap(kind)
    sustained = min(kind.baseline_gbps, cap)
    capacity = sustained * 10**9 * SECONDS_PER_MONTH / GB_BITS * inputs.azs
    return Bandwidth(
        average_gbps=average,
        peak_gbps=average * inputs.peak_factor,
        internet_cap_gbps=cap,
        sustained_gbps=sustained,
        burst_gbps=min(kind.burst_gbps, cap),
        capacity_gb_month=capacity,
    )


def _warnings(
    inputs: CostInputs, kind: InstanceType, bw: Bandwidth, points: tuple[BreakEven, ...]
) -> tuple[Warning_, ...]:
    out: list[Warning_] = []
    t, g = inputs.instance_type, "Gbit/s"
    avg, peak = f"{bw.average_gbps:.2f} {g}", f"{bw.peak_gbps:.2f} {g}"
    if bw.average_gbps > bw.sustained_gbps:
        msg = (
            f"average {avg} per AZ exceeds the {bw.sustained_gbps:g} {g} {t} sustains "
            "to the internet: choose a larger type"
        )
        out.append(Warning_("over_capacity", msg))
    elif bw.peak_gbps > bw.burst_gbps:
        msg = (
            f"peak {peak} per AZ (x{inputs.peak_factor:g} the average) exceeds the "
            f"{bw.burst_gbps:g} {g} cap of {t} to the internet"
        )
        out.append(Warning_("peak_over_cap", msg))
    elif bw.peak_gbps > bw.sustained_gbps:
        msg = (
            f"peak {peak} per AZ is above the {bw.sustained_gbps:g} {g} baseline of {t}: "
            "it runs on network burst credits, which last minutes, not hours"
        )
        out.append(Warning_("peak_on_burst", msg))
    if kind.burstable:
        msg = (
            f"{t} is burstable: CPU credits and a {kind.baseline_gbps:g} {g} network baseline; "
            "under steady load it falls back to the baseline (in unlimited mode it bills "
            "surplus CPU credits, not counted here)"
        )
        out.append(Warning_("burstable", msg))
    if inputs.spot:
        msg = (
            "Spot instances are reclaimed with two minutes' notice and a type's Spot "
            "capacity can run out in an AZ: keep an On-Demand standby per AZ; the discount "
            "is typical, not quoted"
        )
        out.append(Warning_("spot", msg))
    if inputs.instances_per_az < 2:
        msg = (
            "one instance per AZ: no standby takes over when it fails (NAT Gateway and "
            "Network Firewall are redundant within their AZ)"
        )
        out.append(Warning_("no_standby", msg))
    for point in points:
        if point.kind == "above" and point.gb_month and point.gb_month > bw.capacity_gb_month:
            msg = (
                f"the break-even against {point.option} ({float(point.gb_month):,.0f} "
                f"GB/month) is beyond what {inputs.azs} leader(s) of {t} sustain "
                f"({bw.capacity_gb_month:,.0f} GB/month)"
            )
            out.append(Warning_("break_even_beyond_capacity", msg))
    return tuple(out)


def estimate(inputs: CostInputs, table: PriceTable) -> Estimate:
    """Price every option for ``inputs``; raise :class:`CostInputError` on bad input."""
    _check(inputs, table)
    appliance = _appliance(inputs, table)
    others = (
        _nat_gateway(inputs, table),
        _network_firewall(inputs, table),
        _gwlb(inputs, table),
    )
    points = tuple(break_even(appliance, o) for o in others)
    kind = table.instances[inputs.instance_type]
    bw = bandwidth(inputs, kind)
    return Estimate(
        inputs=inputs,
        as_of=table.as_of,
        options=(appliance, *others),
        break_even=points,
        bandwidth=bw,
        warnings=_warnings(inputs, kind, bw, points),
    )


def _money(value: Decimal) -> float:
    return float(value.quantize(Decimal("0.01"), rounding="ROUND_HALF_UP"))


def as_dict(est: Estimate) -> dict[str, object]:
    """JSON data of an estimate: dollars to the cent, break-even points also as exact fractions."""
    i = est.inputs
    bw = est.bandwidth
    return {
        "as_of": est.as_of,
        "hours_per_month": int(HOURS_PER_MONTH),
        "inputs": {
            "region": i.region,
            "instance_type": i.instance_type,
            "azs": i.azs,
            "workload_azs": i.workload_azs or i.azs,
            "instances_per_az": i.instances_per_az,
            "spot": i.spot,
            "gb_month": float(i.gb_month),
            "marketplace_fee_hour": float(i.marketplace_fee_hour),
            "peak_factor": float(i.peak_factor),
            "volume_gb": i.volume_gb,
        },
        "options": {
            o.key: {
                "label": o.label,
                "monthly_usd": _money(o.monthly_usd),
                "fixed_usd": _money(o.fixed_usd),
                "usd_per_gb": float(o.usd_per_gb),
                "lines": [
                    {
                        "item": line.item,
                        "quantity": float(line.quantity),
                        "unit": line.unit,
                        "unit_usd": float(line.unit_usd),
                        "usd": _money(line.usd),
                        "basis": line.basis,
                    }
                    for line in o.lines
                ],
            }
            for o in est.options
        },
        "break_even": {
            p.option: {
                "kind": p.kind,
                "gb_month": None if p.gb_month is None else round(float(p.gb_month), 3),
                "exact": None if p.gb_month is None else str(p.gb_month),
            }
            for p in est.break_even
        },
        "bandwidth": {
            "average_gbps_per_az": round(float(bw.average_gbps), 4),
            "peak_gbps_per_az": round(float(bw.peak_gbps), 4),
            "internet_cap_gbps": float(bw.internet_cap_gbps),
            "sustained_gbps": float(bw.sustained_gbps),
            "burst_gbps": float(bw.burst_gbps),
            "capacity_gb_month": round(float(bw.capacity_gb_month)),
        },
        "warnings": [{"code": w.code, "message": w.message} for w in est.warnings],
    }
