"""Renders the product's nftables ruleset and applies it atomically.

The ruleset lives in one table of its own (``inet spectra``) and is replaced in a
single ``nft -f`` transaction (create-if-missing, delete, re-create), so other tables
are never touched and a failed apply leaves the previous ruleset in place.

The slow path's invariant (DESIGN.md §2): whatever arrives on the inside, nothing leaves
the outside interface with an untranslated private source, a martian destination or a
conntrack-INVALID state. A bare masquerade rule does not give this (the kernel forwards
INVALID packets untranslated), hence the guard chain after source NAT.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

TABLE = "spectra"

# Destinations never routed to the internet (RFC 6890 special-purpose, RFC 1918,
# shared address space, multicast, reserved). The documentation ranges are left out
# on purpose: the lab's internet uses them.
MARTIAN_DESTINATIONS = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
)


class NftError(RuntimeError):
    """nft rejected a ruleset or could not be run."""


@dataclass(frozen=True, slots=True)
class NatPolicy:
    """What the kernel path needs to know: interfaces and the translated source."""

    inside_if: str
    outside_if: str
    outside_addresses: tuple[str, ...]


def render_ruleset(policy: NatPolicy) -> str:
    """The whole ``inet spectra`` table as one atomic nft script."""
    out_if = _quote(policy.outside_if)
    in_if = _quote(policy.inside_if)
    saddrs = ", ".join(policy.outside_addresses)
    martians = ", ".join(MARTIAN_DESTINATIONS)
    return f"""\
table inet {TABLE}
delete table inet {TABLE}
table inet {TABLE} {{
\tchain forward {{
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state invalid counter drop comment "never forward what conntrack cannot track"
\t\tiifname {out_if} ct state new counter drop comment "no unsolicited inbound"
\t\tiifname {in_if} oifname {out_if} ip daddr {{ {martians} }} counter drop \
comment "martian destination"
\t}}
\tchain postrouting_nat {{
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname {out_if} counter masquerade
\t}}
\tchain egress_guard {{
\t\ttype filter hook postrouting priority srcnat + 10; policy accept;
\t\toifname {out_if} ip saddr != {{ {saddrs} }} counter drop \
comment "untranslated source"
\t}}
}}
"""


def _quote(ifname: str) -> str:
    if not ifname or any(c in ifname for c in ' "\\;{}'):
        raise NftError(f"interface name {ifname!r} is not a valid Linux interface name")
    return f'"{ifname}"'


def apply_ruleset(script: str) -> None:
    """Check, then apply ``script`` in one transaction; raise :class:`NftError` on failure."""
    for args in (["nft", "-c", "-f", "-"], ["nft", "-f", "-"]):
        proc = subprocess.run(args, input=script, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise NftError(f"{' '.join(args)}: {proc.stderr.strip()}")


def table_present() -> bool:
    proc = subprocess.run(
        ["nft", "list", "table", "inet", TABLE], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0


def remove_table() -> None:
    subprocess.run(
        ["nft", "delete", "table", "inet", TABLE], capture_output=True, text=True, check=False
    )
