"""The product's nftables table: apply atomically, and tell whether it is there.

The ruleset lives in one table of its own (``inet spectra``) and is replaced in a
single ``nft -f`` transaction (create-if-missing, delete, re-create), so other tables
are never touched and a failed apply leaves the previous ruleset in place. What goes in
the table is rendered by the nftables converge step (:mod:`control.steps.nftables`).
"""

from __future__ import annotations

import subprocess

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


def apply_ruleset(script: str) -> None:
    """Apply ``script`` in one transaction; raise :class:`NftError` on failure.

    ``nft -f`` sends the whole script as one netlink batch that the kernel commits or
    aborts as a unit, so a refused script leaves the previous ruleset in place; a
    separate ``nft -c`` pass first would only double the cost (a 100,000-CIDR set)."""
    args = ["nft", "-f", "-"]
    proc = subprocess.run(args, input=script, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NftError(f"{' '.join(args)}: {proc.stderr.strip()}")


def table_present(family: str = "inet", table: str = TABLE) -> bool:
    proc = subprocess.run(
        ["nft", "list", "table", family, table], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0
