"""The L4 load balancer's nftables table: virtual services as DNAT maps (pure rendering).

This kernel has no IPVS, so each virtual service (``load_balancer.listeners[i]``) is one
rule in a ``nat`` prerouting chain of the table ``ip spectra_lb``, which picks the
backend from a named interval map ``vs<i>``::

    ip daddr { VIP } tcp dport 9000 dnat ip to numgen inc mod 1024 map @vs0

The map spreads :data:`SLOTS` generator values over the healthy backends, each backend
getting slots in proportion to its weight, interleaved (``numgen inc``: in turn;
``jhash ip saddr``: by client address). NAT rules see only a connection's first packet
(conntrack keeps the mapping for the rest: "Performing Network Address Translation" in
the nftables wiki), so rewriting a map's elements changes where *new* connections go and
never moves an established one. A health change is :func:`map_update`: ``flush map`` and
``add element`` in one ``nft -f`` transaction.

Hairpin: a client on the inside reaching a virtual service whose backend is also
reached through the inside interface gets its source translated to the gateway's inside
address too (``masquerade``), or the backend would answer the client directly and the
client would drop the reply from an address it never called.

The table is the load balancer's own (the nftables step owns ``inet spectra``); it is
applied by :func:`control.nftables.apply_ruleset` (one transaction) with the current
health, so re-applying the main table never resets the maps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network

FAMILY = "ip"
TABLE = "spectra_lb"
SLOTS = 1024  # generator values per map: weight resolution 1/1024


@dataclass(frozen=True, slots=True)
class Target:
    """One backend: where a new connection may be sent, and its share."""

    address: str
    port: int
    weight: int = 1

    @property
    def key(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class Check:
    """A listener's health check (see :class:`control.config.proxies.HealthCheck`)."""

    protocol: str
    port: int | None
    path: str
    interval: float
    timeout: float
    rise: int
    fall: int


@dataclass(frozen=True, slots=True)
class VirtualService:
    """One listener as rendered for this instance."""

    index: int
    name: str
    addresses: tuple[str, ...]
    proto: str
    port: int
    algorithm: str
    backends: tuple[Target, ...]  # the document's; a target group adds more at run time
    target_group_arn: str | None
    check: Check

    @property
    def map_name(self) -> str:
        return f"vs{self.index}"


@dataclass(frozen=True, slots=True)
class LbPart:
    """The load balancer's part of a plan (``None`` when it is off)."""

    services: tuple[VirtualService, ...]
    inside_if: str
    sync_seconds: float
    networks: tuple[IPv4Network, ...] = ()  # where target group targets may be


def slots(targets: Sequence[Target]) -> list[tuple[int, int, Target]]:
    """``(first, last, target)`` runs covering ``0..SLOTS-1``: each target gets slots in
    proportion to its weight, interleaved by smooth weighted round robin (nginx's
    algorithm), so consecutive connections of ``numgen inc`` alternate between backends
    instead of coming in long runs; empty when there is no target."""
    total = sum(t.weight for t in targets)
    if not total:
        return []
    current = [0] * len(targets)
    runs: list[tuple[int, int, Target]] = []
    for slot in range(SLOTS):
        for i, target in enumerate(targets):
            current[i] += target.weight
        best = max(range(len(targets)), key=current.__getitem__)
        current[best] -= total
        if runs and runs[-1][2] == targets[best]:
            runs[-1] = (runs[-1][0], slot, targets[best])
        else:
            runs.append((slot, slot, targets[best]))
    return runs


def elements(targets: Sequence[Target]) -> str:
    """The map's elements for ``targets`` (empty string: none)."""
    return ", ".join(
        f"{lo}-{hi} : {t.address} . {t.port}" if lo != hi else f"{lo} : {t.address} . {t.port}"
        for lo, hi, t in slots(targets)
    )


def _map_lines(vs: VirtualService, targets: Sequence[Target]) -> list[str]:
    lines = [
        f"\tmap {vs.map_name} {{",
        f"\t\ttypeof numgen inc mod {SLOTS} : ip daddr . {vs.proto} dport",
        "\t\tflags interval",
    ]
    found = elements(targets)
    if found:
        lines.append(f"\t\telements = {{ {found} }}")
    return [*lines, "\t}"]


def _pick(vs: VirtualService) -> str:
    return "jhash ip saddr" if vs.algorithm == "source" else "numgen inc"


def render_table(part: LbPart, healthy: Mapping[int, Sequence[Target]]) -> str:
    """The whole ``ip spectra_lb`` table with ``healthy[index]`` in each map."""
    lines = [
        f"table {FAMILY} {TABLE}",
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
    ]
    for vs in part.services:
        lines += _map_lines(vs, healthy.get(vs.index, ()))
    lines += [
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
    ]
    for vs in part.services:
        daddr = ", ".join(vs.addresses)
        lines.append(
            f"\t\tip daddr {{ {daddr} }} {vs.proto} dport {vs.port} counter "
            f"dnat ip to {_pick(vs)} mod {SLOTS} map @{vs.map_name} "
            f'comment "load_balancer.listeners[{vs.index}]: {vs.name}"'
        )
    inside = f'"{part.inside_if}"'
    lines += [
        "\t}",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        f"\t\tiifname {inside} oifname {inside} ct status dnat counter masquerade "
        'comment "hairpin: the backend answers through the gateway"',
        "\t}",
        "}",
    ]
    return "\n".join(lines) + "\n"


def map_update(vs: VirtualService, targets: Sequence[Target]) -> str:
    """One transaction replacing the elements of ``vs``'s map by ``targets``."""
    lines = [f"flush map {FAMILY} {TABLE} {vs.map_name}"]
    found = elements(targets)
    if found:
        lines.append(f"add element {FAMILY} {TABLE} {vs.map_name} {{ {found} }}")
    return "\n".join(lines) + "\n"
